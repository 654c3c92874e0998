"""Serves the GUI at `/gui` on the API server: the static front end, a login page for browsers away from
loopback, and one JSON endpoint per page (`/gui/api/...`), each built by gui/views.py from what the CP holds.

Pages learn about changes by polling `/gui/api/version`, a few numbers the CP already keeps (the store's revision,
the delivery cache's change counter, sync's generation count): one cheap request a second per open page, and a
page re-reads its data only when one of them moved.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources as importlib_resources
from typing import Any

import msgspec
import yaml
from aiohttp import web

from dpagent import __version__
from dpagent.controlplane.gui import views
from dpagent.controlplane.identity import INSIGHT
from dpagent.controlplane.inspect import Inspector, to_json
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.resources import record_to_doc
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.xds.nodeid import node_id
from dpagent.errors import NotFound
from dpagent.model.dataplane import decode_dataplane
from dpagent.model.mesh import decode_mesh

COOKIE = "dpagent_gui"
USER_COOKIE_PREFIX = "u."  # a user's session cookie: the user token itself, checked like a bearer token
STATIC = ("app.js", "app.css", "index.html", "login.html")
TICK = 15.0  # seconds: the version moves at least this often, so expiry bars and timelines follow the clock
# Same-origin only: no inline script or style, nothing from elsewhere (an injected <script> cannot run, and the
# air-gapped promise is checked by the browser itself).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}


def session_value(admin_token: str) -> str:
    """The cookie's value: derived from the admin token, so it dies with it (a new token logs every browser out)
    and the token itself never sits in a browser's cookie jar."""
    return hmac.new(admin_token.encode(), b"dpagent gui session v1", hashlib.sha256).hexdigest()


def cookie_ok(request: web.Request, admin_token: str) -> bool:
    given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), session_value(admin_token).encode())


def is_public(path: str) -> bool:
    """What a browser must reach without a session: the login page, the static assets (no data in them) and the
    logout (it only deletes the cookie)."""
    return path in ("/gui/login", "/gui/logout") or path.startswith("/gui/static/")


def _asset(name: str) -> bytes:
    return importlib_resources.files("dpagent.controlplane.gui").joinpath("static", name).read_bytes()


@functools.lru_cache(maxsize=16)
def _roots(bundle_pem: str, backends: tuple[str, ...]) -> list[views.RootCert]:
    return views.bundle_roots(bundle_pem, backends)


def _json(data: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), content_type="application/json", headers=SECURITY_HEADERS)


def _missing(message: str) -> web.Response:
    """A detail page whose object is gone (deleted while the page was open, or a stale link): an answer the page
    shows, not a 404 a browser reports as a failed load on every refresh."""
    return _json({"missing": message})


@dataclass
class GuiSources:
    """Everything the pages read; the CP wires its live objects in, tests and the bench their own."""

    store: ResourceStore
    cache: Any  # xds.cache.SnapshotCache
    sync: Any  # xds.sync.XdsSync: state(mesh), connected, issuable(mesh, backend), generations
    inspector: Inspector
    admin_token: str
    store_type: str = "sqlite"
    store_location: str = ""
    started: float = 0.0
    versions: Mapping[str, Mapping[str, str]] | None = None  # node id → {"agent": ..., "envoy": ...}
    leader: Callable[[], Awaitable[str | None]] | None = None  # HA: who leads; None → single replica


class Gui:
    def __init__(self, src: GuiSources) -> None:
        self.src = src
        self.assets = {n: _asset(n) for n in STATIC}
        self._lists: dict[tuple[str, str | None], tuple[int, list[Any]]] = {}

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/gui", self.redirect)
        r.add_get("/gui/", self.page)
        r.add_get("/gui/login", self.login_page)
        r.add_post("/gui/login", self.login)
        r.add_post("/gui/logout", self.logout)
        r.add_get("/gui/static/{name}", self.static)
        r.add_get("/gui/api/version", self.version)
        r.add_get("/gui/api/overview", self.overview)
        r.add_get("/gui/api/dataplanes", self.dataplanes)
        r.add_get("/gui/api/dataplanes/{mesh}/{name}", self.dataplane)
        r.add_get("/gui/api/services/{mesh}", self.services)
        r.add_get("/gui/api/policies", self.policies)
        r.add_get("/gui/api/policies/{mesh}/{kind}/{name}", self.policy)
        r.add_get("/gui/api/certificates", self.certificates)
        r.add_get("/gui/api/audit", self.audit)

    # ---- pages and login --------------------------------------------------------------------------------------

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/gui/")

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.assets["index.html"], content_type="text/html", headers=SECURITY_HEADERS)

    async def login_page(self, request: web.Request) -> web.Response:
        body = self.assets["login.html"]
        if request.query.get("failed"):
            message = b'<p class="error" id="login-error">That is neither the admin token nor a valid user token.</p>'
            body = body.replace(b"<!--MESSAGE-->", message, 1)
        return web.Response(body=body, content_type="text/html", headers=SECURITY_HEADERS)

    async def login(self, request: web.Request) -> web.Response:
        """The admin token or a user token. The admin's cookie is derived from the admin token; a user's cookie
        is their token (so expiry and revocation apply to the session as they do to the token), and what the user
        sees is decided by their roles like any API call."""
        from dpagent.controlplane.tokens import TokenError
        from dpagent.controlplane.usertokens import UserTokens

        form = await request.post()
        token = str(form.get("token", "")).strip()
        if token and hmac.compare_digest(token.encode(), self.src.admin_token.encode()):
            value = session_value(self.src.admin_token)
        else:
            try:
                await UserTokens(self.src.store).principal(token, request.remote or "")
            except TokenError:
                raise web.HTTPSeeOther("/gui/login?failed=1") from None
            value = USER_COOKIE_PREFIX + token
        resp = web.HTTPSeeOther("/gui/")
        # HttpOnly: page scripts cannot read it; SameSite=Strict: no other site's page or link sends it; the
        # cookie opens GET requests under /gui only (see authz.Gate.authenticate), so it can never change anything.
        resp.set_cookie(COOKIE, value, path="/gui", httponly=True, samesite="Strict", secure=request.secure)
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = web.HTTPSeeOther("/gui/login")
        resp.del_cookie(COOKIE, path="/gui")
        raise resp

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.assets or name.endswith(".html"):
            raise web.HTTPNotFound()
        return web.Response(body=self.assets[name], content_type=_TYPES[name.rsplit(".", 1)[1]],
                            headers=SECURITY_HEADERS)

    # ---- data -------------------------------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        rev = await self.src.store.revision()
        v = f"{rev}.{self.src.cache.changes}.{self.src.sync.generations}.{int(time.time() // TICK)}"
        return _json({"version": v})

    async def _list(self, kind: str, mesh: str | None) -> list[Any]:
        """store.list, reused while the store's revision stands: the leaf records behind the dataplanes and
        certificates pages are a thousand documents at 1,000 proxies, and they change a few times a minute."""
        rev = await self.src.store.revision()
        hit = self._lists.get((kind, mesh))
        if hit is None or hit[0] != rev:
            hit = self._lists[(kind, mesh)] = (rev, await self.src.store.list(kind, mesh=mesh))
        return hit[1]

    def _status(self, mesh: str, name: str) -> dict[str, Any] | None:
        return self.src.cache.status(node_id(mesh, name))

    async def _rows(self, mesh: str | None = None) -> list[views.DataplaneRow]:
        """Dataplanes as sync parsed them (no document decoded per request), with their leaf records."""
        meshes = [mesh] if mesh else [r.name for r in await self.src.store.list("Mesh")]
        insights = {(r.mesh, r.name): r.doc for r in await self._list(INSIGHT, mesh)}
        vers = self.src.versions or {}
        rows = []
        for m in meshes:
            state = await self.src.sync.state(m)
            for name, dp in sorted((state.by_name if state else {}).items()):
                node = node_id(m, name)
                rows.append(views.dataplane_row(dp, insights.get((m, name)), self.src.cache.status(node),
                                                vers.get(node)))
        return rows

    async def overview(self, request: web.Request) -> web.Response:
        meshes = []
        for mrec in await self.src.store.list("Mesh"):
            state = await self.src.sync.state(mrec.name)
            names = state.by_name if state else {}
            statuses = [views.status_of(self.src.cache.status(node_id(mrec.name, n))) for n in names]
            services = len(state.ctx.by_service) if state else 0
            counts = {kind: len(state.ctx.policies.get(kind, ())) if state else 0 for kind in POLICY_KINDS}
            meshes.append(views.mesh_summary(mrec.doc, statuses, services, counts))
        leader = await self.src.leader() if self.src.leader else None
        now = time.time()
        cp = views.ControlPlaneInfo(__version__, self.src.store_type, self.src.store_location,
                                    leader or "single replica", self.src.started, now - self.src.started)
        return _json(views.Overview(cp, meshes))

    async def dataplanes(self, request: web.Request) -> web.Response:
        rows = await self._rows(request.query.get("mesh") or None)
        return _json({"total": len(rows), "items": rows})

    async def dataplane(self, request: web.Request) -> web.Response:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        rec = await self.src.store.get("Dataplane", mesh, name)
        if rec is None:
            return _missing(f'Dataplane "{name}" in mesh "{mesh}" does not exist (any more)')
        insight = await self.src.store.get(INSIGHT, mesh, name)
        node = node_id(mesh, name)
        row = views.dataplane_row(decode_dataplane(rec.doc), insight.doc if insight else None,
                                  self.src.cache.status(node), (self.src.versions or {}).get(node))
        inspect = await self.src.inspector.dataplane(mesh, name, record_to_doc(rec))
        try:
            config = await self.src.inspector.config(mesh, name)
        except NotFound:
            config = {}
        history = [{"at": at, "event": ev} for at, ev in self.src.cache.history(node)]
        return _json({"row": row, "inspect": to_json(inspect), "config": config, "history": history,
                      "yaml": yaml.safe_dump(rec.doc, sort_keys=False)})

    async def _state(self, mesh: str) -> Any:
        if await self.src.store.get("Mesh", "", mesh) is None:
            raise NotFound(f'mesh "{mesh}" not found')
        return await self.src.sync.state(mesh)

    async def services(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        state = await self._state(mesh)
        if state is None:
            return _json({"mesh": mesh, "services": [], "matrix": None})
        statuses = {name: views.status_of(self._status(mesh, name)) for name in state.by_name}
        # The matrix and the policy lists depend on the mesh context only: services_page memoises them on it, so
        # they are computed once per change of the mesh, however many pages ask.
        return _json(views.services_page(state.ctx, statuses))

    async def policies(self, request: web.Request) -> web.Response:
        out: dict[str, list[views.PolicyRow]] = {}
        for kind in POLICY_KINDS:
            out[kind] = [views.PolicyRow(kind, r.mesh, r.name, views.target_of(r.doc), r.modified)
                         for r in await self.src.store.list(kind)]
        return _json({"kinds": out})

    async def policy(self, request: web.Request) -> web.Response:
        mesh, kind, name = request.match_info["mesh"], request.match_info["kind"], request.match_info["name"]
        if kind not in POLICY_KINDS:
            raise NotFound(f"{kind} is not a policy kind")
        rec = await self.src.store.get(kind, mesh, name)
        if rec is None:
            return _missing(f'{kind} "{name}" in mesh "{mesh}" does not exist (any more)')
        state = await self._state(mesh)
        items = views.affected(state.ctx, kind, name) if state else []
        return _json({"kind": kind, "mesh": mesh, "name": name, "yaml": yaml.safe_dump(rec.doc, sort_keys=False),
                      "affected": items})

    async def audit(self, request: web.Request) -> web.Response:
        """The newest entries of the audit log (the API's `/audit` has the filters)."""
        from dpagent.controlplane.api import audit_json
        from dpagent.controlplane.store import AuditQuery

        return _json({"items": [audit_json(e) for e in await self.src.store.audit_entries(AuditQuery(limit=200))]})

    async def certificates(self, request: web.Request) -> web.Response:
        now = time.time()
        out = []
        for mrec in await self.src.store.list("Mesh"):
            mesh = decode_mesh(mrec.doc)
            state = await self.src.sync.state(mesh.name)
            backends_in = tuple(state.bundle_backends) if state else ()
            insights = [r.doc for r in await self._list(INSIGHT, mesh.name)]
            connected = [self.src.cache.status(n) for n, (m, _) in list(self.src.sync.connected.items())
                         if m == mesh.name]
            enabled = (mesh.mtls.enabled_backend if mesh.mtls else "") or ""
            issuing = bool(enabled) and self.src.sync.issuable(mesh.name, enabled)
            out.append(views.MeshCertificates(
                mesh.name, bool(enabled), views.backends_view(mesh, backends_in),
                _roots(state.ctx.trust_bundle if state else "", backends_in),
                views.timeline(insights, now),
                views.switch_progress(mesh, backends_in, connected, insights, issuing, now)))
        return _json({"meshes": out, "now": now})
