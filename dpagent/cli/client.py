"""The REST client shared by apply/get/delete/inspect/token, with one place that turns HTTP failures into messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import httpx

from dpagent.errors import ConfigError, ControlPlaneRejected, ControlPlaneUnavailable, NotFound, ValidationError

DEFAULT_API = "http://127.0.0.1:5681"


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


def api_options(fn: Any) -> Any:
    fn = click.option("--api-token-file", envvar="DPAGENT_API_TOKEN_FILE", default="",
                      help="admin token file (needed off-host)  [env DPAGENT_API_TOKEN_FILE]")(fn)
    fn = click.option("--api-address", envvar="DPAGENT_API_ADDRESS", default=DEFAULT_API, show_default=True,
                      help="control plane REST API  [env DPAGENT_API_ADDRESS]")(fn)
    return fn


def make_client(api_address: str, api_token_file: str) -> ApiClient:
    token = ""
    if api_token_file:
        try:
            token = Path(api_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the API token file {api_token_file}: {e.strerror}") from None
    elif os.environ.get("DPAGENT_API_TOKEN"):
        token = os.environ["DPAGENT_API_TOKEN"].strip()
    return ApiClient(api_address, token)
