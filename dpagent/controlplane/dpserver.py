"""The DP server (HTTPS, 5678): `POST /bootstrap` (Kuma's wire format), `POST /certificates` and `POST /leave`.

Unlike Kuma, the token is verified here, before any config is produced, so a bad token fails at start-up with
a clear reason instead of as an endless Envoy reconnect loop. It is verified first, before the Dataplane is looked
up or a rate limit is charged: an unauthenticated caller learns nothing and can hold nothing.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dpagent import safe_yaml
from dpagent.controlplane.auth import DataplaneAuth
from dpagent.controlplane.ca import CSRError
from dpagent.controlplane.http_guard import BodyError, Guard
from dpagent.controlplane.identity import Issuer, MtlsDisabledError
from dpagent.controlplane.kinds import kind_of
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import StoreUnavailable
from dpagent.controlplane.tokens import TokenError, generate_command
from dpagent.errors import ValidationError
from dpagent.model.dataplane import Dataplane, decode_dataplane, parse_dataplane
from dpagent.model.mesh import decode_mesh

log = logging.getLogger("dpagent.cp.dpserver")

MAX_CSR_BODY = 16 * 1024
MAX_BOOTSTRAP_BODY = 1024 * 1024
CSR_RATE = 2.0  # sustained certificate requests per second per dataplane
CSR_BURST = 5.0


def _err(status: int, title: str, causes: list[tuple[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"title": title}
    if causes:
        body["causes"] = [{"field": f, "message": m} for f, m in causes]
    return web.json_response(body, status=status)


class TokenBucket:
    """Per-dataplane CSR rate limit: a leaked token must not turn the CA into a signing oracle.

    Only authenticated dataplanes are charged, and the table is bounded: buckets that have refilled carry no
    state worth keeping and are dropped first, then the oldest.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 50_000) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._state: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._state)

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._state.items() if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._state[k]
        while len(self._state) >= self.max_keys:
            del self._state[next(iter(self._state))]

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a request would be allowed."""
        now = self.clock()
        if key not in self._state and len(self._state) >= self.max_keys:
            self._prune(now)
        tokens, last = self._state.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1 - tokens) / self.rate


BootstrapRenderer = Callable[..., dict[str, Any]]

# Bootstrap request fields and the JSON type each must have when present (Kuma's BootstrapRequest).
_BOOTSTRAP_STRINGS = ("mesh", "name", "dataplaneToken", "dataplaneTokenPath", "dataplaneResource", "caCert", "workdir",
                      "operatingSystem", "proxyType")
_BOOTSTRAP_PORTS = ("readinessPort", "dnsPort")
_BOOTSTRAP_SHAPES: tuple[tuple[str, type], ...] = (("version", dict), ("features", list),
                                                   ("controlPlaneHosts", list))
MAX_CP_HOSTS = 16
_HOST_RE = re.compile(r"[A-Za-z0-9.:-]{1,253}")  # a DNS name or an IP address (what ends up in Envoy's cluster)


def _cp_hosts(req: dict[str, Any]) -> tuple[str, ...]:
    """The replica hosts the agent was given (--cp-address with several URLs), if they look like host names."""
    hosts = tuple(h for h in req.get("controlPlaneHosts") or [] if isinstance(h, str) and _HOST_RE.fullmatch(h))
    return hosts[:MAX_CP_HOSTS]


def _bearer(request: web.Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else header.strip()


def _type_problems(body: dict[str, Any], strings: tuple[str, ...], required: tuple[str, ...] = (),
                   ports: tuple[str, ...] = (), shapes: tuple[tuple[str, type], ...] = ()) -> list[tuple[str, str]]:
    """Every field of the wrong JSON type: a number where a name belongs is the client's bug, never a 500."""
    out = []
    for field in strings:
        value = body.get(field)
        if field in required and (value is None or value == ""):
            out.append((field, "must be defined"))
        elif value is not None and not isinstance(value, str):
            out.append((field, f"must be a string, not {type(value).__name__}"))
    for field in ports:
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535):
            out.append((field, "must be a port number (0-65535)"))
    for field, kind in shapes:
        if body.get(field) is not None and not isinstance(body[field], kind):
            out.append((field, f"must be {'an object' if kind is dict else 'a list'}"))
    return out


@web.middleware
async def _store_unavailable(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """The database is down or failing over: a 503 the agent retries, not a 500 with a traceback."""
    try:
        return await handler(request)
    except StoreUnavailable as e:
        return _err(503, f"the control plane's store is unavailable, retry later: {e}")


class DpServer:
    def __init__(self, resources: Resources, auth: DataplaneAuth, issuer: Issuer, *, xds_port: int, cp_ca_pem: str,
                 xds_host: str = "", on_direct: Callable[[str, str], Awaitable[None]] | None = None,
                 on_leave: Callable[[str, str], Awaitable[None]] | None = None,
                 on_bootstrap: Callable[[str, str], Awaitable[None]] | None = None, guard: Guard | None = None) -> None:
        self.resources = resources
        self.store = resources.store
        self.auth = auth
        self.issuer = issuer
        self.xds_port = xds_port
        self.xds_host = xds_host
        self.cp_ca_pem = cp_ca_pem
        self.on_direct = on_direct
        self.on_leave = on_leave
        self.on_bootstrap = on_bootstrap  # a new agent run: a previous run's drain is over
        self.csr_limit = TokenBucket(CSR_RATE, CSR_BURST)
        self.guard = guard or Guard("dp server", max_connections=1024, read_timeout=10.0)

    @staticmethod
    def _token_refusal(e: TokenError) -> web.Response:
        return _err(403 if e.reason in ("name", "tags", "mesh") else 401, str(e))

    async def _refused(self, token: str, dp: Dataplane) -> web.Response | None:
        """None when the token is valid for this dataplane; else the 401/403 answer with the verifier's reason."""
        try:
            await self.auth.verify(token, dp)
        except TokenError as e:
            return self._token_refusal(e)
        return None

    async def _registered(self, mesh: str, name: str, token: str, hint: str = "") -> tuple[Dataplane | None,
                                                                                           web.Response | None]:
        """The stored Dataplane the token is valid for, or the answer explaining why not.

        The token is checked before the lookup, so only a caller holding a valid token for this mesh (and, if the
        token names one, this dataplane) can tell a missing dataplane from a refused one.
        """
        try:
            claims = await self.auth.authenticate(token, mesh)
        except TokenError as e:
            return None, self._token_refusal(e)
        if claims.name and claims.name != name:
            return None, _err(403, f"token is for dataplane {claims.name!r}, not {name!r}; use that dataplane's token")
        rec = await self.store.get("Dataplane", mesh, name)
        if rec is None:
            return None, _err(404, f'Dataplane "{name}" in mesh "{mesh}" not found{hint}')
        dp = decode_dataplane(rec.doc)
        refused = await self._refused(token, dp)
        return (None, refused) if refused else (dp, None)

    async def _json(self, request: web.Request, limit: int, what: str) -> dict[str, Any] | web.Response:
        """The request's JSON object, or the 4xx answer naming the problem."""
        try:
            raw = await self.guard.read_body(request, limit)
        except BodyError as e:
            return _err(e.status, f"{what}: {e}")
        try:
            body = safe_yaml.load_json(raw)
        except ValueError as e:
            return _err(400, f"{what} is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _err(400, f"{what} must be a JSON object")
        return body

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BOOTSTRAP_BODY, middlewares=[self.guard.middleware,
                                                                               _store_unavailable])
        app.router.add_post("/bootstrap", self.bootstrap)
        app.router.add_post("/certificates", self.certificates)
        app.router.add_post("/leave", self.leave)
        return app

    async def leave(self, request: web.Request) -> web.Response:
        """The agent is draining: stop sending it new traffic now, deregister it after the delay (direct only).

        An explicit call, because whether Envoy's ADS stream ends "gracefully" depends on timing (Kuma #13403).
        """
        body = await self._json(request, 4096, "the leave request")
        if isinstance(body, web.Response):
            return body
        if problems := _type_problems(body, ("mesh", "name"), required=("mesh", "name")):
            return _err(400, "the leave request must be JSON with mesh and name", problems)
        mesh, name = body["mesh"], body["name"]
        _, refused = await self._registered(mesh, name, _bearer(request))
        if refused:
            return refused
        if self.on_leave:
            await self.on_leave(mesh, name)
        return web.json_response({"leaving": f"{mesh}/{name}"})

    async def bootstrap(self, request: web.Request) -> web.Response:
        req = await self._json(request, MAX_BOOTSTRAP_BODY, "the bootstrap request")
        if isinstance(req, web.Response):
            return req
        if problems := _type_problems(req, _BOOTSTRAP_STRINGS, ports=_BOOTSTRAP_PORTS, shapes=_BOOTSTRAP_SHAPES):
            return _err(400, "the bootstrap request has fields of the wrong type", problems)
        mesh, name = req.get("mesh") or "", req.get("name") or ""
        token = (req.get("dataplaneToken") or "").strip()
        if not token:
            return _err(422, "a dataplane token is required: generate one with "
                             f"`{generate_command(name or 'NAME', mesh)}` and pass it with --dataplane-token-file")
        dp_kind = kind_of("dataplane")
        direct = bool(req.get("dataplaneResource"))
        if direct:
            try:
                doc = safe_yaml.load_json(req["dataplaneResource"])
            except ValueError as e:
                return _err(422, f"dataplaneResource is not valid JSON: {e}")
            doc_mesh = doc.get("mesh") if isinstance(doc, dict) else None
            if isinstance(doc_mesh, str) and doc_mesh:  # else validation refuses it without looking at the store
                try:  # authenticated for the claimed mesh before the store is consulted
                    await self.auth.authenticate(token, doc_mesh)
                except TokenError as e:
                    return self._token_refusal(e)
            try:
                await self.resources.apply(doc, kind=dp_kind, dry_run=True)
                dp = parse_dataplane(doc)
            except ValidationError as e:
                return _err(422, str(e).splitlines()[0], e.violations)
            if refused := await self._refused(token, dp):
                return refused
        else:
            if not mesh or not name:
                return _err(400, "the bootstrap request must name the dataplane (mesh and name) or carry it "
                                 "(dataplaneResource)", [(f, "must be defined") for f in ("mesh", "name")
                                                         if not req.get(f)])
            found, refused = await self._registered(mesh, name, token)
            if found is None:
                return refused  # type: ignore[return-value]
            dp = found
        if direct:
            await self.resources.apply(doc, kind=dp_kind)
            if self.on_direct:
                await self.on_direct(dp.mesh, dp.name)
        if self.on_bootstrap:
            await self.on_bootstrap(dp.mesh, dp.name)
        boot = self._render(req, dp, token, request)
        text = safe_yaml.dump(boot, sort_keys=True)
        log.info("served a bootstrap", extra={"kv": {"mesh": dp.mesh, "name": dp.name,
                                                     "lifecycle": "direct" if direct else "indirect"}})
        return web.json_response({"bootstrap": base64.b64encode(text.encode()).decode(),
                                  "kumaSidecarConfiguration": {"networking": {"address": dp.networking.address}}})

    def _render(self, req: dict[str, Any], dp: Dataplane, token: str, request: web.Request) -> dict[str, Any]:
        from dpagent.controlplane.xds.bootstrap import BootstrapParams, render_bootstrap

        host = self.xds_host or (request.host.rsplit(":", 1)[0].strip("[]") if request.host else "localhost")
        services = dp.services or [dp.name]
        return render_bootstrap(BootstrapParams(
            mesh=dp.mesh, name=dp.name, service=services[0],
            # Windows agents get a loopback TCP admin: Envoy's Unix-socket admin is not available there.
            workdir="" if req.get("operatingSystem") == "windows" else (req.get("workdir") or ""),
            admin_port=(dp.networking.admin.port if dp.networking.admin else 0) or 9901,
            xds_host=host, xds_hosts=() if self.xds_host else _cp_hosts(req), xds_port=self.xds_port,
            ca_pem=req.get("caCert") or self.cp_ca_pem, token=token,
            token_path=req.get("dataplaneTokenPath") or "",
            dataplane_json=req.get("dataplaneResource") or "", readiness_port=req.get("readinessPort") or 9902,
            dns_port=req.get("dnsPort") or 0, versions=req.get("version") or {},
            features=[f for f in req.get("features") or [] if isinstance(f, str)]))

    async def certificates(self, request: web.Request) -> web.Response:
        body = await self._json(request, MAX_CSR_BODY, "the certificate request")
        if isinstance(body, web.Response):
            return body
        if problems := _type_problems(body, ("mesh", "name", "csr"), required=("mesh", "name", "csr")):
            return _err(400, "the certificate request must be JSON with mesh, name and csr", problems)
        mesh, name, csr = body["mesh"], body["name"], body["csr"]
        dp, refused = await self._registered(mesh, name, _bearer(request), "; bootstrap it first")
        if dp is None:
            return refused  # type: ignore[return-value]
        # Charged only once the caller proved it is this dataplane: a garbage token naming it costs it nothing.
        wait = self.csr_limit.take(f"{mesh}/{name}")
        if wait:
            return web.json_response({"title": f"too many certificate requests for {mesh}/{name}; retry later"},
                                     status=429, headers={"retry-after": str(max(1, round(wait)))})
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
