"""The REST client shared by apply/get/delete/inspect/token, with one place that turns HTTP failures into messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx

from dpagent.errors import ConfigError, ControlPlaneRejected, ControlPlaneUnavailable, NotFound, ValidationError
from dpagent.model.validation import ref_problem

DEFAULT_API = "http://127.0.0.1:5681"


def url_path(*parts: str | tuple[str, Any]) -> str:
    """A REST path from fixed segments and (label, name) pairs. Names are checked with the rule for naming an
    existing resource (ref_problem: '_' allowed, as for resources stored under Kuma's older rules) and escaped, so
    a name like `../../meshes/x` is refused here instead of addressing another resource."""
    out = []
    for part in parts:
        if isinstance(part, tuple):
            label, value = part
            problem = ref_problem(value)
            if problem:
                raise ConfigError(f"{label} {value!r} is not a valid name: it {problem}")
            out.append(quote(value, safe=""))
        else:
            out.append(part)
    return "/" + "/".join(out)


class ApiClient:
    def __init__(self, address: str, token: str = "") -> None:
        self.address = address.rstrip("/")
        headers = {"accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.address, headers=headers, timeout=30, trust_env=False)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ControlPlaneUnavailable(
                f"cannot reach the control plane API at {self.address}; is `dpagent cp run` running? "
                "Pass --api-address (or DPAGENT_API_ADDRESS) to point elsewhere") from None
        except httpx.HTTPError as e:
            raise ControlPlaneUnavailable(f"the API at {self.address} failed: {e}") from None
        if resp.status_code < 400:
            return resp
        try:
            body = resp.json()
        except ValueError:
            body = {"title": resp.text.strip()}
        title = body.get("title") or f"HTTP {resp.status_code}"
        causes = [(c.get("field", ""), c.get("message", "")) for c in body.get("causes") or []]
        if causes:
            raise ValidationError(re.sub(r" is invalid( \(\d+ problems?\))?:?$", "", title), causes)
        if resp.status_code == 404:
            raise NotFound(title)
        if resp.status_code == 401:
            raise ControlPlaneRejected(title)
        if resp.status_code == 409:
            raise ConfigError(title)
        raise ControlPlaneRejected(f"{title} (HTTP {resp.status_code})")

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()


_TOKEN_KEY = "dpagent.auth_token"


def _remember_token(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[_TOKEN_KEY] = value or ""
    return value


def api_options(fn: Any) -> Any:
    fn = click.option("--auth-token", envvar="DPAGENT_API_TOKEN", default="", expose_value=False,
                      callback=_remember_token,
                      help="a user token or the admin token  [env DPAGENT_API_TOKEN]")(fn)
    fn = click.option("--api-token-file", envvar="DPAGENT_API_TOKEN_FILE", default="",
                      help="file holding the token (e.g. <data-dir>/admin-token)  [env DPAGENT_API_TOKEN_FILE]")(fn)
    fn = click.option("--api-address", envvar="DPAGENT_API_ADDRESS", default=DEFAULT_API, show_default=True,
                      help="control plane REST API (default: the current `dpagent config control-planes` entry, "
                           "else this)  [env DPAGENT_API_ADDRESS]")(fn)
    return fn


def make_client(api_address: str, api_token_file: str) -> ApiClient:
    """Address and token, first found wins: flags and env, then the current control plane of `dpagent config
    control-planes`. A context's token is sent only to that context's address, never to one given by flag."""
    from click.core import ParameterSource

    from dpagent.cli.contexts import current

    ctx = click.get_current_context(silent=True)
    token = (ctx.meta.get(_TOKEN_KEY, "") if ctx else "") or os.environ.get("DPAGENT_API_TOKEN", "")
    if not token and api_token_file:
        try:
            token = Path(api_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the API token file {api_token_file}: {e.strerror}") from None
    given = ctx is not None and ctx.get_parameter_source("api_address") not in (ParameterSource.DEFAULT, None)
    cp = current()
    if cp is not None and not given:
        api_address = cp.address
        token = token or cp.token
    return ApiClient(api_address, token.strip())
