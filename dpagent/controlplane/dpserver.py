"""The DP server (HTTPS, 5678): `POST /bootstrap` (Kuma's wire format) and `POST /certificates`.

Unlike Kuma, the token is verified here, before any config is produced, so a bad token fails at start-up with
a clear reason instead of as an endless Envoy reconnect loop.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from dpagent.controlplane.auth import DataplaneAuth
from dpagent.controlplane.ca import CSRError
from dpagent.controlplane.identity import Issuer, MtlsDisabledError
from dpagent.controlplane.kinds import kind_of
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.tokens import TokenError
from dpagent.errors import ValidationError
from dpagent.model.dataplane import Dataplane, decode_dataplane, parse_dataplane
from dpagent.model.mesh import decode_mesh

log = logging.getLogger("dpagent.cp.dpserver")

MAX_CSR_BODY = 16 * 1024
CSR_RATE = 2.0  # sustained certificate requests per second per dataplane
CSR_BURST = 5.0


def _err(status: int, title: str, causes: list[tuple[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"title": title}
    if causes:
        body["causes"] = [{"field": f, "message": m} for f, m in causes]
    return web.json_response(body, status=status)


class TokenBucket:
    """Per-dataplane CSR rate limit: a leaked token must not turn the CA into a signing oracle."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a request would be allowed."""
        now = self.clock()
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1 - tokens) / self.rate


BootstrapRenderer = Callable[..., dict[str, Any]]


def _bearer(request: web.Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else header.strip()


class DpServer:
    def __init__(self, resources: Resources, auth: DataplaneAuth, issuer: Issuer, *, xds_port: int, cp_ca_pem: str,
                 xds_host: str = "", on_direct: Callable[[str, str], Awaitable[None]] | None = None,
                 on_leave: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.resources = resources
        self.store = resources.store
        self.auth = auth
        self.issuer = issuer
        self.xds_port = xds_port
        self.xds_host = xds_host
        self.cp_ca_pem = cp_ca_pem
        self.on_direct = on_direct
        self.on_leave = on_leave
        self.csr_limit = TokenBucket(CSR_RATE, CSR_BURST)

    async def _refused(self, token: str, dp: Dataplane) -> web.Response | None:
        """None when the token is valid for this dataplane; else the 401/403 answer with the verifier's reason."""
        try:
            await self.auth.verify(token, dp)
        except TokenError as e:
            return _err(403 if e.reason in ("name", "tags", "mesh") else 401, str(e))
        return None

    async def _registered(self, mesh: str, name: str, token: str, hint: str = "") -> tuple[Dataplane | None,
                                                                                           web.Response | None]:
        """The stored Dataplane the token is valid for, or the answer explaining why not."""
        rec = await self.store.get("Dataplane", mesh, name)
        if rec is None:
            return None, _err(404, f'Dataplane "{name}" in mesh "{mesh}" not found{hint}')
        dp = decode_dataplane(rec.doc)
        refused = await self._refused(token, dp)
        return (None, refused) if refused else (dp, None)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/bootstrap", self.bootstrap)
        app.router.add_post("/certificates", self.certificates)
        app.router.add_post("/leave", self.leave)
        return app

    async def leave(self, request: web.Request) -> web.Response:
        """The agent is draining: stop sending it new traffic now, deregister it after the delay (direct only).

        An explicit call, because whether Envoy's ADS stream ends "gracefully" depends on timing (Kuma #13403).
        """
        try:
            body = json.loads(await request.content.read(4096))
            mesh, name = body["mesh"], body["name"]
        except (ValueError, KeyError, TypeError):
            return _err(400, "the leave request must be JSON with mesh and name")
        _, refused = await self._registered(mesh, name, _bearer(request))
        if refused:
            return refused
        if self.on_leave:
            await self.on_leave(mesh, name)
        return web.json_response({"leaving": f"{mesh}/{name}"})

    async def bootstrap(self, request: web.Request) -> web.Response:
        try:
            req = json.loads(await request.read())
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return _err(400, f"the bootstrap request is not valid JSON: {e}")
        mesh, name = req.get("mesh") or "", req.get("name") or ""
        token = (req.get("dataplaneToken") or "").strip()
        if not token:
            return _err(422, "a dataplane token is required: generate one with `dpagent token generate --name "
                             f"{name or 'NAME'} --mesh {mesh or 'default'} --valid-for 720h` and pass it with "
                             "--dataplane-token-file")
        dp_kind = kind_of("dataplane")
        direct = bool(req.get("dataplaneResource"))
        if direct:
            try:
                doc = json.loads(req["dataplaneResource"])
            except (ValueError, TypeError) as e:
                return _err(422, f"dataplaneResource is not valid JSON: {e}")
            try:
                await self.resources.apply(doc, kind=dp_kind, dry_run=True)
                dp = parse_dataplane(doc)
            except ValidationError as e:
                return _err(422, str(e).splitlines()[0], e.violations)
            if refused := await self._refused(token, dp):
                return refused
        else:
            found, refused = await self._registered(mesh, name, token)
            if found is None:
                return refused  # type: ignore[return-value]
            dp = found
        if direct:
            await self.resources.apply(doc, kind=dp_kind)
            if self.on_direct:
                await self.on_direct(dp.mesh, dp.name)
        boot = self._render(req, dp, token, request)
        text = yaml.safe_dump(boot, sort_keys=True)
        log.info("served a bootstrap", extra={"kv": {"mesh": dp.mesh, "name": dp.name,
                                                     "lifecycle": "direct" if direct else "indirect"}})
        return web.json_response({"bootstrap": base64.b64encode(text.encode()).decode(),
                                  "kumaSidecarConfiguration": {"networking": {"address": dp.networking.address}}})

    def _render(self, req: dict[str, Any], dp: Dataplane, token: str, request: web.Request) -> dict[str, Any]:
        from dpagent.controlplane.xds.bootstrap import BootstrapParams, render_bootstrap

        host = self.xds_host or (request.host.rsplit(":", 1)[0].strip("[]") if request.host else "localhost")
        services = dp.services or [dp.name]
        versions = req.get("version") if isinstance(req.get("version"), dict) else {}
        return render_bootstrap(BootstrapParams(
            mesh=dp.mesh, name=dp.name, service=services[0],
            # Windows agents get a loopback TCP admin: Envoy's Unix-socket admin is not available there.
            workdir="" if req.get("operatingSystem") == "windows" else (req.get("workdir") or ""),
            admin_port=(dp.networking.admin.port if dp.networking.admin else 0) or 9901,
            xds_host=host, xds_port=self.xds_port, ca_pem=req.get("caCert") or self.cp_ca_pem, token=token,
            token_path=req.get("dataplaneTokenPath") or "",
            dataplane_json=req.get("dataplaneResource") or "", readiness_port=int(req.get("readinessPort") or 9902),
            dns_port=int(req.get("dnsPort") or 0), versions=versions or {},
            features=[f for f in req.get("features") or [] if isinstance(f, str)]))

    async def certificates(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_CSR_BODY:
            return _err(413, f"certificate request larger than {MAX_CSR_BODY} bytes; send only the CSR")
        raw = await request.content.read(MAX_CSR_BODY + 1)
        if len(raw) > MAX_CSR_BODY:
            return _err(413, f"certificate request larger than {MAX_CSR_BODY} bytes; send only the CSR")
        try:
            body = json.loads(raw)
            mesh, name, csr = body["mesh"], body["name"], body["csr"]
        except (ValueError, KeyError, TypeError):
            return _err(400, "the certificate request must be JSON with mesh, name and csr")
        wait = self.csr_limit.take(f"{mesh}/{name}")
        if wait:
            return web.json_response({"title": f"too many certificate requests for {mesh}/{name}; retry later"},
                                     status=429, headers={"retry-after": str(max(1, round(wait)))})
        dp, refused = await self._registered(mesh, name, _bearer(request), "; bootstrap it first")
        if dp is None:
            return refused  # type: ignore[return-value]
        mesh_rec = await self.store.get("Mesh", "", mesh)
        if mesh_rec is None:
            return _err(404, f'mesh "{mesh}" not found')
        try:
            out = await self.issuer.issue(decode_mesh(mesh_rec.doc), dp, csr)
        except MtlsDisabledError as e:
            return _err(409, str(e))
        except CSRError as e:
            return _err(400, str(e))
        return web.json_response(out)
