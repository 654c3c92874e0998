"""The API server's door: who is calling (admin token, user token, GUI cookie, or loopback when allowed), what the
matched route asks for (ROUTE table), and the one decision (`rbac.Authorizer.decide`) for both.

Every route must have a row in the table: a request to a route without one is refused with a 500 naming it, and
the route-matrix test walks every registered route, so a route added without a rule fails the build. Handlers
that learn more once the body is read (a policy's targets, a token's mesh) call `Gate.require` again with the
fuller request; the route-level check is the same question with those parts not yet known.

Refused writes and failed writes are appended to the audit log here; successful resource writes are recorded by
the store in the write's own transaction (the handler passes the entry down).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dpagent.controlplane.rbac import UNKNOWN, Access, Authorizer, Decision, effective
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.tokens import TokenError
from dpagent.controlplane.usertokens import Principal, UserTokens, admin, anonymous
from dpagent.errors import DpAgentError

log = logging.getLogger("dpagent.cp.authz")

PUBLIC = "public"
READS = frozenset({"GET", "VIEW_CONFIG", "VIEW_SECRETS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: request -> what it asks for; `PUBLIC` needs nobody
RouteRule = Callable[[web.Request], Awaitable[Access]] | str
PRINCIPAL = web.RequestKey("dpagent.principal", Principal)
ACCESS = web.RequestKey("dpagent.access", Access)


def is_loopback(remote: str | None) -> bool:
    import ipaddress

    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def _json_error(status: int, title: str) -> web.Response:
    return web.json_response({"title": title, "details": title}, status=status)


def _fixed(access: str, kind: str | None = None, mesh_from: str | None = None, name_from: str | None = None,
           mesh: str | None = None) -> RouteRule:
    """A rule whose target comes from the URL: `mesh_from`/`name_from` name path parameters."""

    async def rule(request: web.Request) -> Access:
        m = request.match_info.get(mesh_from) if mesh_from else mesh
        n = request.match_info.get(name_from) if name_from else None
        return Access(access, kind, m, n)

    return rule


@dataclass
class Gate:
    """Authentication settings and the authorizer, shared by the middleware and the handlers."""

    store: ResourceStore
    admin_token: str
    loopback_admin: bool = True
    users: UserTokens | None = None
    authorizer: Authorizer | None = None

    def __post_init__(self) -> None:
        self.users = self.users or UserTokens(self.store)
        self.authorizer = self.authorizer or Authorizer(self.store)

    async def authenticate(self, request: web.Request) -> Principal:
        """TokenError (a 401) for a token that is presented but not valid: a caller who sent credentials must
        hear why they failed, not be served as anonymous."""
        from dpagent.controlplane.gui.server import COOKIE, USER_COOKIE_PREFIX, cookie_ok

        source = request.remote or ""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token:
            if hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return admin(source)
            assert self.users is not None
            return await self.users.principal(token, source)
        gui_read = (request.path == "/gui" or request.path.startswith("/gui/")) and request.method in ("GET",
                                                                                                       "HEAD")
        if gui_read and cookie_ok(request, self.admin_token):
            return admin(source)
        cookie = request.cookies.get(COOKIE, "")
        if gui_read and cookie.startswith(USER_COOKIE_PREFIX):
            assert self.users is not None
            return await self.users.principal(cookie[len(USER_COOKIE_PREFIX):], source)
        if self.loopback_admin and is_loopback(source):
            return admin(source)
        return anonymous(source)

    async def decide(self, who: Principal, want: Access) -> Decision:
        assert self.authorizer is not None
        return await self.authorizer.decide(who, want)

    async def require(self, request: web.Request, want: Access) -> Principal:
        """The fuller check a handler makes once it knows the body; raises the 403 (or 401) itself."""
        who = request[PRINCIPAL]
        want = effective(want)
        decision = await self.decide(who, want)
        if not decision.allowed:
            await self.refused(who, want, decision.reason)
            raise _refusal(who, decision)
        request[ACCESS] = want
        return who

    async def refused(self, who: Principal, want: Access, why: str) -> None:
        """Refusals of signed-in callers are recorded; anonymous ones are not, or anyone who can reach the port
        could push the real entries out of a count-bounded log."""
        assert self.authorizer is not None
        if who.anonymous:
            return
        kind = want.kind if want.kind not in (None, UNKNOWN) else ""
        mesh = want.mesh if want.mesh not in (None, UNKNOWN) else ""
        if await self.authorizer.records(want.access, kind or "", mesh or ""):
            name = want.name if want.name not in (None, UNKNOWN) else ""
            await self.store.append_audit(who.audit(want.access, kind or "", mesh or "", name or "", "denied", why))

    async def record(self, who: Principal, access: str, kind: str, mesh: str, name: str, outcome: str,
                     detail: str = "") -> None:
        """An entry for an act that changes no resource (issuing a token) or did not happen (a failed write)."""
        assert self.authorizer is not None
        if await self.authorizer.records(access, kind, mesh):
            await self.store.append_audit(who.audit(access, kind, mesh, name, outcome, detail))

    async def entry_for(self, who: Principal, access: str, kind: str, mesh: str, name: str, detail: str = ""
                        ) -> Any:
        """The entry a write hands to the store, or None when AccessAudit does not select it."""
        from dpagent.controlplane.rbac import SECRET_KINDS

        assert self.authorizer is not None
        if not await self.authorizer.records(access, kind, mesh):
            return None
        return who.audit(access, kind, mesh, name, "allowed", detail, digests=kind not in SECRET_KINDS)


class Refused(web.HTTPException):
    def __init__(self, status: int, title: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"title": title, "details": title}), content_type="application/json")


def _refusal(who: Principal, decision: Decision) -> web.HTTPException:
    if who.anonymous:
        return Refused(401, "authentication required: send a user token or the admin token as 'Authorization: "
                            "Bearer <token>' (dpagent CLI: --auth-token, DPAGENT_API_TOKEN, or `dpagent config "
                            "control-planes add`)")
    return Refused(403, f"forbidden: {decision.reason}")


def route_key(request: web.Request) -> tuple[str, str] | None:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return None
    return route.method, resource.canonical  # type: ignore[union-attr]


def middleware(gate: Gate, rules: dict[tuple[str, str], RouteRule]) -> Any:
    """Authenticate, find the route's rule, decide; a write that then fails is recorded as failed."""

    @web.middleware
    async def authz(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            who = await gate.authenticate(request)
        except TokenError as e:
            return _json_error(401, f"authentication failed: {e}")
        request[PRINCIPAL] = who
        key = route_key(request)
        if key is None:  # no such path (the handler answers 404/405), but only to someone who has signed in
            if who.anonymous:
                raise _refusal(who, Decision(False, "no route"))
            return await handler(request)
        method = "GET" if key[0] == "HEAD" else key[0]
        rule = rules.get((method, key[1]))
        if rule is None:
            log.error("route without an authorization rule", extra={"kv": {"route": f"{key[0]} {key[1]}"}})
            return _json_error(500, f"route {key[0]} {key[1]} has no authorization rule; it is refused until "
                                    "it has one (dpagent/controlplane/authz_routes.py)")
        if rule == PUBLIC:
            return await handler(request)
        assert callable(rule)
        want = effective(await rule(request))
        decision = await gate.decide(who, want)
        if not decision.allowed:
            if who.anonymous and request.method == "GET" and (request.path == "/gui" or (
                    request.path.startswith("/gui/") and not request.path.startswith("/gui/api/"))):
                raise web.HTTPSeeOther("/gui/login")
            await gate.refused(who, want, decision.reason)
            raise _refusal(who, decision)
        request[ACCESS] = want
        try:
            response = await handler(request)
            if want.access in READS and response.status < 400:  # recorded only when an AccessAudit asks for it
                await gate.record(who, want.access, _known(want.kind), _known(want.mesh), _known(want.name),
                                  "allowed", f"{request.method} {request.path}")
            return response
        except (DpAgentError, web.HTTPException) as e:
            if request.method not in ("GET", "HEAD") and not isinstance(e, Refused | web.HTTPRedirection):
                done = request.get(ACCESS, want)
                await gate.record(who, done.access, _known(done.kind), _known(done.mesh), _known(done.name),
                                  "failed", (str(e).splitlines() or [type(e).__name__])[0][:500])
            raise

    return authz


def _known(value: str | None) -> str:
    return "" if value in (None, UNKNOWN) else str(value)


