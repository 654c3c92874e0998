"""Control-plane client for `POST /bootstrap` (Kuma's wire format, reference kuma-dp.md §2).

Every failure is classified once, here: retryable (connection refused, timeouts, 5xx, dataplane not registered
yet) or final (token rejected, validation, TLS trust), and mapped to a message that says what to fix. Final errors
stop at once: retrying a rejected token for five minutes only hides the problem (Kuma #2023).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import platform
import re
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_fixed

from dpagent import GIT_TAG, __version__, safe_yaml
from dpagent.errors import ConfigError, ControlPlaneRejected, ControlPlaneUnavailable
from dpagent.log import kv

log = logging.getLogger("dpagent.bootstrap")

FEATURES = ("feature-tcp-accesslog-via-named-pipe", "feature-embedded-dns", "feature-file-sds-identity")
# The agent writes its token as a file-based SDS secret too (lifecycle.TokenMirror), so the CP may have Envoy inject
# it on the Envoy gRPC client, whose reconnect back-off it can bound (controlplane/xds/bootstrap.py). Asked for only
# with the Envoy this was verified with: the credential injector as an upstream filter is recent.
TOKEN_SDS_FEATURE = "feature-token-sds"
TOKEN_SDS_MIN_ENVOY = (1, 40)


def _envoy_at_least(version: str, floor: tuple[int, int]) -> bool:
    nums = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    return len(nums) == 2 and nums >= floor


@dataclasses.dataclass(frozen=True)
class EnvoyVersion:
    version: str
    build: str


@dataclasses.dataclass(frozen=True)
class BootstrapRequestParams:
    mesh: str
    name: str
    token: str
    token_path: str
    resource_json: str
    envoy: EnvoyVersion
    ca_cert: str
    dns_port: int
    readiness_port: int
    workdir: str
    proxy_type: str = "dataplane"
    # Every CP replica's host (from --cp-address): the CP lists them all in the ADS cluster, so Envoy moves to
    # another replica when its own dies. Not a Kuma field; a kuma-cp ignores it.
    cp_hosts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    yaml_text: str
    config: dict[str, Any]
    sidecar: dict[str, Any]


class Retryable(Exception):
    """A failure worth another attempt; its message is the user-facing explanation."""


def build_request(p: BootstrapRequestParams) -> dict[str, Any]:
    """Kuma's BootstrapRequest JSON; field names kept exactly so a real kuma-cp accepts it."""
    body: dict[str, Any] = {
        "mesh": p.mesh,
        "name": p.name,
        "proxyType": p.proxy_type,
        "version": {
            "kumaDp": {"version": __version__, "gitTag": GIT_TAG, "gitCommit": "", "buildDate": ""},
            "envoy": {"version": p.envoy.version, "build": p.envoy.build, "kumaDpCompatible": True},
        },
        "caCert": p.ca_cert,
        "dynamicMetadata": {},
        "dnsPort": p.dns_port,
        "readinessPort": p.readiness_port,
        "operatingSystem": platform.system().lower(),
        "features": list(FEATURES) + ([TOKEN_SDS_FEATURE] if p.token_path and _envoy_at_least(
            p.envoy.version, TOKEN_SDS_MIN_ENVOY) else []),
        "resources": {"maxHeapSizeBytes": 0},
        "workdir": p.workdir,
        "metricsResources": {"certPath": "", "keyPath": ""},
        "systemCaPath": "",
        "ipv6Enabled": False,
        "spireResources": {"socketPath": ""},
    }
    if p.token:
        body["dataplaneToken"] = p.token
    if p.token_path:
        body["dataplaneTokenPath"] = p.token_path
    if p.resource_json:
        body["dataplaneResource"] = p.resource_json
    if len(p.cp_hosts) > 1:
        body["controlPlaneHosts"] = list(p.cp_hosts)
    return body


def cp_hosts(urls: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h for h in (urlsplit(u).hostname for u in urls) if h))


def parse_response(payload: bytes) -> BootstrapResult:
    try:
        doc = json.loads(payload)
        raw = base64.b64decode(doc["bootstrap"], validate=True).decode()
        config = safe_yaml.load(raw)
    except (ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ControlPlaneRejected(
            f"the control plane answered /bootstrap with something that is not a bootstrap response ({e}); "
            "check that --cp-address points at a dpagent or Kuma control plane's DP server port (5678)"
        ) from None
    if not isinstance(config, dict):
        raise ControlPlaneRejected("the control plane sent an empty Envoy bootstrap; check the control plane's log")
    return BootstrapResult(raw, config, doc.get("kumaSidecarConfiguration") or {})


def _reason(resp: httpx.Response) -> str:
    text = resp.text.strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        parts = [str(doc.get("title") or doc.get("message") or doc.get("details") or "")]
        for cause in doc.get("causes") or doc.get("invalid_parameters") or []:
            if isinstance(cause, dict):
                parts.append(f"  - {cause.get('field', '')}: {cause.get('message', cause.get('reason', ''))}")
        return "\n".join(p for p in parts if p) or text
    return text


def classify_response(resp: httpx.Response, cp_url: str) -> None:
    """Raise Retryable or ControlPlaneRejected for a non-200 answer."""
    code, reason = resp.status_code, _reason(resp)
    if code in (401, 403):
        fix = "" if "dpagent token generate" in reason else (
            " Generate a new one on the CP host with `dpagent token generate --name NAME --mesh MESH"
            " --tag kuma.io/service=SERVICE --valid-for 720h` and pass it with --dataplane-token-file")
        raise ControlPlaneRejected(
            f"the control plane rejected the dataplane token ({code}): {reason or 'no reason given'}.{fix}")
    if code == 404:
        if not reason or ("dataplane" in reason.lower() and "not found" in reason.lower()):
            raise Retryable("the Dataplane is not registered on the control plane yet (create it with "
                            "`dpagent apply`, or pass the resource with --dataplane-file)")
        raise ControlPlaneRejected(
            f"{cp_url}/bootstrap does not exist (404). Check that --cp-address points at the control plane's "
            "DP server port (5678 by default), not the REST API (5681)"
        )
    if code == 422:
        raise ControlPlaneRejected(f"the control plane refused the Dataplane (422):\n{reason}")
    if code >= 500:
        raise Retryable(f"the control plane failed ({code}): {reason or 'no details'}")
    raise ControlPlaneRejected(f"the control plane rejected the bootstrap request ({code}): {reason or 'no details'}")


def _tls_failure(err: BaseException, cp_url: str, ca_file: str) -> ControlPlaneRejected | None:
    cur: BaseException | None = err
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError):
            host = urlsplit(cp_url).hostname
            msg = cur.verify_message or str(cur)
            if "mismatch" in msg.lower():
                return ControlPlaneRejected(
                    f"the control plane's TLS certificate is not valid for {host!r} ({msg}). Use a --cp-address "
                    f"host that the certificate names, or restart the CP with `--hostname {host}` so its "
                    "certificate includes it"
                )
            where = f"the CA in {ca_file}" if ca_file else "the system trust store"
            return ControlPlaneRejected(
                f"the control plane's TLS certificate is not trusted by {where} ({msg}). Pass the CP's CA "
                "with --ca-cert-file (dpagent cp writes it to <data-dir>/ca.pem), or --skip-verify for a test"
            )
        cur = cur.__cause__ or cur.__context__
    return None


def ssl_context(ca_cert: str, ca_file: str, skip_verify: bool) -> ssl.SSLContext | bool:
    if skip_verify:
        log.warning("--skip-verify is set: the control plane's identity is NOT verified; do not use in production")
        return False
    if ca_cert:
        try:
            ctx = ssl.create_default_context(cadata=ca_cert)
        except ssl.SSLError as e:
            raise ConfigError(f"KUMA_CONTROL_PLANE_CA_CERT does not hold a PEM certificate ({e.reason}); "
                              "it takes the PEM text itself, --ca-cert-file takes a path") from None
    elif ca_file:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the CA certificate {ca_file}: {e}; check --ca-cert-file") from None
    else:
        ctx = ssl.create_default_context()  # the system trust store, only when no CA was given
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def post_once(client: httpx.AsyncClient, cp_url: str, body: Mapping[str, Any], ca_file: str) -> BootstrapResult:
    parts = urlsplit(cp_url)
    url = f"{parts.scheme}://{parts.netloc}/bootstrap"
    try:
        resp = await client.post(url, json=body, headers={"accept": "application/json"})
    except httpx.ConnectError as e:
        tls = _tls_failure(e, cp_url, ca_file)
        if tls:
            raise tls from None
        raise Retryable(f"cannot connect to the control plane at {cp_url} ({e or type(e).__name__}); check "
                        "--cp-address and that the control plane is running") from None
    except httpx.TimeoutException:
        raise Retryable(f"the control plane at {cp_url} did not answer in time") from None
    except httpx.TransportError as e:
        raise Retryable(f"talking to the control plane at {cp_url} failed: {e or type(e).__name__}") from None
    if resp.status_code != 200:
        classify_response(resp, cp_url)
    return parse_response(resp.content)


async def post_any(client: httpx.AsyncClient, cp_urls: tuple[str, ...], body: Mapping[str, Any],
                   ca_file: str) -> BootstrapResult:
    """Each replica in turn: one that is down costs a connect error, not a backoff; the round fails (and is
    retried after the backoff) only when none answered."""
    failure: Retryable | None = None
    for url in cp_urls:
        try:
            return await post_once(client, url, body, ca_file)
        except Retryable as e:
            failure = e
            if len(cp_urls) > 1:
                kv(log, logging.INFO, "control-plane replica did not serve the bootstrap; trying the next",
                   cp=url, reason=str(e))
    assert failure is not None
    raise failure


async def fetch_bootstrap(
    cp_url: str | tuple[str, ...], body: Mapping[str, Any], *, verify: ssl.SSLContext | bool, ca_file: str,
    backoff: float, max_duration: float, timeout: float = 10.0,
) -> BootstrapResult:
    """POST /bootstrap with a constant backoff until max_duration; cancellable (the first stop signal)."""
    urls = (cp_url,) if isinstance(cp_url, str) else cp_url
    last: list[str] = []

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        last[:] = [str(err)]
        kv(log, logging.WARNING, "bootstrap failed, will retry", attempt=state.attempt_number, reason=str(err),
           retry_in=f"{backoff:g}s")

    async with httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False) as client:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(max_duration), wait=wait_fixed(backoff),
                retry=retry_if_exception_type(Retryable), before_sleep=before_sleep, reraise=True,
            ):
                with attempt:
                    return await post_any(client, urls, body, ca_file)
        except Retryable as e:
            raise ControlPlaneUnavailable(
                f"could not fetch the Envoy bootstrap from {', '.join(urls)} within {max_duration:g}s: {e}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def announce_leave(cp_url: str | tuple[str, ...], *, verify: ssl.SSLContext | bool, token: str, mesh: str,
                         name: str) -> bool:
    """Tell the CP this proxy is draining so it withdraws its endpoints now; best effort, never blocks a stop.
    Any replica will do (the drain is stored, every replica reads it), so the first that answers is enough."""
    reason = ""
    async with httpx.AsyncClient(verify=verify, timeout=2.0, trust_env=False) as client:
        for url in (cp_url,) if isinstance(cp_url, str) else cp_url:
            parts = urlsplit(url)
            try:
                resp = await client.post(f"{parts.scheme}://{parts.netloc}/leave", json={"mesh": mesh, "name": name},
                                         headers={"authorization": f"Bearer {token}"})
            except httpx.HTTPError as e:
                reason = type(e).__name__
                continue
            return resp.status_code == 200
    kv(log, logging.INFO, "could not tell the control plane about the drain", reason=reason)
    return False
