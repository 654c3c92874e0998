"""The REST API (Kuma's paths): resource CRUD with pagination, dataplane and user tokens, `_inspect`, `/audit`.

Every route passes authz.middleware: callers present the admin token or a user token as a bearer token (loopback
callers without one count as the admin only while `apiServer.authn.localhostIsAdmin` is on), and each route's
access is decided from the AccessRoles bound to them (authz_routes.py). Bodies are JSON or YAML; validation errors
list every violation with its path. Writes carry their audit entry down to the store, which commits it with the
change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from dpagent import __version__, safe_yaml
from dpagent.controlplane import authz_routes, secrets, usertokens
from dpagent.controlplane.authz import ACCESS, PRINCIPAL, Gate, is_loopback, middleware
from dpagent.controlplane.http_guard import BodyError, Guard
from dpagent.controlplane.inspect import Inspector, to_json
from dpagent.controlplane.kinds import KINDS, Kind, kind_of
from dpagent.controlplane.leader import LeaderView
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.rbac import Access
from dpagent.controlplane.resources import Resources, record_to_doc
from dpagent.controlplane.store import AuditQuery, StoreUnavailable
from dpagent.controlplane.tokens import TokenError, issue_token
from dpagent.durations import parse_duration
from dpagent.errors import ConfigError, Conflict, DpAgentError, NotFound, ValidationError
from dpagent.model.validation import TAG_KEY_RE, TAG_VALUE_RE, ref_problem

log = logging.getLogger("dpagent.cp.api")

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_OFFSET = 2**31 - 1  # far past any real listing; SQLite cannot take an offset beyond 2**63
MAX_BODY = 4 * 1024 * 1024


def _error(status: int, title: str, causes: list[tuple[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"title": title, "details": title}
    if causes:
        body["details"] = "Resource is not valid"
        body["causes"] = [{"field": f, "message": m} for f, m in causes]
    return web.json_response(body, status=status)


__all__ = ["Api", "is_loopback"]


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as e:
        return _error(400, str(e).splitlines()[0], e.violations)
    except NotFound as e:
        return _error(404, str(e))
    except Conflict as e:
        return _error(409, str(e))
    except (ConfigError, TokenError) as e:
        return _error(400, str(e))
    except BodyError as e:
        return _error(e.status, str(e))
    except StoreUnavailable as e:  # the database is down or failing over: retry later, nothing is wrong with the call
        return _error(503, str(e))
    except DpAgentError as e:
        return _error(500, str(e))


async def _body(request: web.Request, guard: Guard) -> Any:
    """The decoded body. YAML aliases are refused and nesting is bounded: a few hundred bytes of nested aliases
    would otherwise expand to a resource of many megabytes, around the body size limit."""
    raw = await guard.read_body(request, MAX_BODY)
    decode = safe_yaml.load_json if "json" in (request.content_type or "") else safe_yaml.load
    try:
        # A large body takes a while to parse: off the event loop, so DP-server and ADS work is not held up.
        return await asyncio.to_thread(decode, raw) if len(raw) > 64 * 1024 else decode(raw)
    except ValueError as e:
        raise ValidationError("request body", [("$", f"not valid JSON or YAML: {e}")]) from None
    except yaml.YAMLError as e:
        raise ValidationError("request body", [("$", f"not valid JSON or YAML: {safe_yaml.describe(e)}")]) from None


def _page(request: web.Request) -> tuple[int, int]:
    try:
        offset = int(request.query.get("offset", 0))
        size = int(request.query.get("size", DEFAULT_PAGE))
    except ValueError:
        raise ValidationError("query", [("offset/size", "must be whole numbers")]) from None
    if not 0 <= offset <= MAX_OFFSET or not 1 <= size <= MAX_PAGE:
        raise ValidationError("query", [("offset/size", f"offset must be between 0 and {MAX_OFFSET} and size "
                                                        f"between 1 and {MAX_PAGE}")])
    return offset, size


class Api:
    def __init__(self, resources: Resources, *, admin_token: str, inspector: Inspector | None = None,
                 certificates: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
                 metrics: Callable[[], Awaitable[str]] | None = None, guard: Guard | None = None,
                 max_token_validity: float = 87600 * 3600.0,
                 status: Callable[[], Awaitable[LeaderView]] | None = None, loopback_admin: bool = True) -> None:
        self.resources = resources
        self.guard = guard or Guard("api server", max_connections=1024, read_timeout=30.0)
        self.max_token_validity = max_token_validity
        self.store = resources.store
        self.admin_token = admin_token
        self.inspector = inspector
        self.certificates = certificates
        self.metrics_fn = metrics
        self.status_fn = status
        self.gate = Gate(self.store, admin_token, loopback_admin)
        self.rules = authz_routes.build(self.store)

    def auth_middleware(self) -> Any:
        """The one authorization middleware (also for the monitoring port's discovery routes)."""
        return middleware(self.gate, self.rules)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard.middleware, error_middleware, self.auth_middleware()],
                              client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/", self.index)
        r.add_post("/tokens/user", self.generate_user_token)
        r.add_post("/tokens/user/revocations", self.revoke_user_token)
        r.add_get("/user-token-signing-keys", self.list_user_keys)
        r.add_post("/user-token-signing-keys", self.rotate_user_key)
        r.add_delete("/user-token-signing-keys/{serial}", self.delete_user_key)
        r.add_get("/audit", self.audit_log)
        r.add_post("/tokens/dataplane", self.generate_token)
        r.add_post("/tokens/dataplane/revocations", self.revoke_token)
        r.add_get("/meshes/{mesh}/signing-keys", self.list_signing_keys)
        r.add_post("/meshes/{mesh}/signing-keys", self.rotate_signing_key)
        r.add_delete("/meshes/{mesh}/signing-keys/{serial}", self.delete_signing_key)
        r.add_get("/meshes/{mesh}/dataplanes/{name}/_inspect", self.inspect)
        r.add_get("/meshes/{mesh}/dataplanes/{name}/_policies", self.inspect_policies)
        r.add_get("/meshes/{mesh}/dataplanes/{name}/_config", self.inspect_config)
        r.add_get("/meshes/{mesh}/dataplanes+insights", self.dataplanes_insights)
        r.add_get("/meshes/{mesh}/certificates", self.certificate_counts)
        r.add_get("/metrics", self.metrics)
        r.add_get("/status/control-plane", self.status)
        for k in KINDS:
            if k.name in POLICY_KINDS:
                r.add_get(f"/meshes/{{mesh}}/{k.plural}/{{name}}/_resources/dataplanes", self._affected(k))
            if k.mesh_scoped:
                r.add_get(f"/{k.plural}", self._list(k, all_meshes=True))
                r.add_get(f"/meshes/{{mesh}}/{k.plural}", self._list(k))
                r.add_route("*", f"/meshes/{{mesh}}/{k.plural}/{{name}}", self._one(k))
            else:
                r.add_get(f"/{k.plural}", self._list(k))
                r.add_route("*", f"/{k.plural}/{{name}}", self._one(k))
        return app

    async def index(self, request: web.Request) -> web.Response:
        return web.json_response({"product": "dpagent", "version": __version__, "kinds": [k.plural for k in KINDS]})

    def _list(self, k: Kind, all_meshes: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            offset, size = _page(request)
            mesh = None if all_meshes else request.match_info.get("mesh")
            if mesh is not None and k.mesh_scoped and await self.store.get("Mesh", "", mesh) is None:
                raise NotFound(f'mesh "{mesh}" not found')
            items, total = await self.resources.list(k, mesh, offset, size)
            nxt = None
            if offset + len(items) < total:
                nxt = str(request.url.with_query({"offset": offset + size, "size": size}))
            return web.json_response({"total": total, "items": [record_to_doc(i) for i in items], "next": nxt})

        return handler

    def _one(self, k: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            mesh = request.match_info.get("mesh", "")
            name = request.match_info["name"]
            if request.method == "GET":
                return web.json_response(record_to_doc(await self.resources.get(k, mesh, name)))
            access: Access = request[ACCESS]
            stored = await self.store.get(k.name, mesh if k.mesh_scoped else "", name) if k.has_spec else None
            if request.method == "DELETE":
                if stored is not None:  # a policy: its targets must be within the caller's rules
                    await self.gate.require(request, Access("DELETE", k.name, access.mesh, name, (stored.doc,)))
                entry = await self.gate.entry_for(request[PRINCIPAL], "DELETE", k.name, access.mesh or "", name)
                await self.resources.delete(k, mesh, name, audit=entry)
                return web.json_response({})
            if request.method == "PUT":
                dry = request.query.get("dryRun", "") in ("1", "true")
                doc = await _body(request, self.guard)
                if k.has_spec and isinstance(doc, dict):  # the new targets, and the old ones it replaces
                    docs = (doc, stored.doc) if stored is not None else (doc,)
                    await self.gate.require(request, Access(access.access, k.name, access.mesh, name, docs))
                entry = None if dry else await self.gate.entry_for(request[PRINCIPAL], access.access, k.name,
                                                                   access.mesh or "", name)
                applied = await self.resources.apply(doc, kind=k, mesh=mesh if k.mesh_scoped else None, name=name,
                                                     dry_run=dry, audit=entry)
                body = {"created": applied.created, "dryRun": dry}
                return web.json_response(body, status=201 if applied.created else 200)
            return _error(405, f"{request.method} is not supported on {request.path}; use GET, PUT or DELETE")

        return handler

    async def generate_token(self, request: web.Request) -> web.Response:
        body = await _body(request, self.guard)
        if not isinstance(body, dict):
            raise ValidationError("token request", [("$", "must be an object")])
        problems = _token_request_problems(body, self.max_token_validity)
        if problems:
            raise ValidationError("token request", problems)
        name, mesh, tags = body.get("name") or "", body.get("mesh") or "default", body.get("tags") or {}
        valid_for = parse_duration(body.get("validFor") or "87600h")
        who = await self.gate.require(request, Access("GENERATE_DATAPLANE_TOKEN", "Dataplane", mesh, name or None))
        if await self.store.get("Mesh", "", mesh) is None:
            raise NotFound(f'mesh "{mesh}" not found; create it before issuing tokens for it')
        key = await secrets.ensure_signing_key(self.store, mesh)
        token = issue_token(key, name=name, mesh=mesh, tags=tags, valid_for=min(valid_for, self.max_token_validity))
        log.info("issued a dataplane token", extra={"kv": {"mesh": mesh, "name_claim": name or "*"}})
        await self.gate.record(who, "GENERATE_DATAPLANE_TOKEN", "Dataplane", mesh, name, "allowed",
                               f"token {_jti_of(token)}, valid for {body.get('validFor') or '87600h'}")
        return web.Response(text=token, content_type="text/plain")

    async def revoke_token(self, request: web.Request) -> web.Response:
        body, jti = _revocation(await _body(request, self.guard), "mesh and token or jti", ("mesh",))
        mesh = body.get("mesh") or "default"
        who = await self.gate.require(request, Access("GENERATE_DATAPLANE_TOKEN", "Dataplane", mesh))
        if await self.store.get("Mesh", "", mesh) is None:
            raise NotFound(f'mesh "{mesh}" not found; tokens are revoked in the mesh they were issued for')
        entry = await self.gate.entry_for(who, "UPDATE", "Secret", mesh, f"dataplane-token-revocations-{mesh}",
                                          f"revoked dataplane token {jti}")
        await secrets.revoke(self.store, mesh, jti, audit=entry)
        return web.json_response({"revoked": jti, "mesh": mesh})

    async def generate_user_token(self, request: web.Request) -> web.Response:
        """Kuma's `generate user-token`: a signed token naming a user and their groups."""
        name, groups, seconds = _user_token_request(await _body(request, self.guard), self.max_token_validity)
        who = request[PRINCIPAL]
        key = await usertokens.ensure_signing_key(self.store)
        token = usertokens.issue(key, name=name, groups=groups, valid_for=seconds)
        await self.gate.record(who, "GENERATE_USER_TOKEN", "", "", name, "allowed",
                               f"token {_jti_of(token)} for groups {', '.join(groups) or '(none)'}")
        return web.Response(text=token, content_type="text/plain")

    async def revoke_user_token(self, request: web.Request) -> web.Response:
        _, jti = _revocation(await _body(request, self.guard), "token or jti")
        entry = await self.gate.entry_for(request[PRINCIPAL], "UPDATE", "GlobalSecret", "", usertokens.REVOCATIONS,
                                          f"revoked user token {jti}")
        await usertokens.revoke(self.store, jti, audit=entry)
        assert self.gate.users is not None
        self.gate.users.forget()
        return web.json_response({"revoked": jti})

    async def list_user_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"serials": [k.serial for k in await usertokens.signing_keys(self.store)]})

    async def rotate_user_key(self, request: web.Request) -> web.Response:
        entry = await self.gate.entry_for(request[PRINCIPAL], "CREATE", "GlobalSecret", "", "user-token-signing-key",
                                          "rotated the user-token signing key")
        key = await usertokens.rotate_signing_key(self.store, audit=entry)
        assert self.gate.users is not None
        self.gate.users.forget()
        return web.json_response({"serial": key.serial}, status=201)

    async def delete_user_key(self, request: web.Request) -> web.Response:
        try:
            serial = int(request.match_info["serial"])
        except ValueError:
            raise ValidationError("signing key", [("serial", "must be a whole number")]) from None
        entry = await self.gate.entry_for(request[PRINCIPAL], "DELETE", "GlobalSecret", "",
                                          f"{usertokens.KEY_PREFIX}{serial}",
                                          f"deleted user-token signing key {serial}")
        await usertokens.delete_signing_key(self.store, serial, audit=entry)
        assert self.gate.users is not None
        self.gate.users.forget()
        return web.json_response({"deleted": serial})

    async def audit_log(self, request: web.Request) -> web.Response:
        """`GET /audit?user=&kind=&mesh=&since=&until=&limit=` (times: RFC 3339 or Unix seconds), newest first."""
        return web.json_response({"items": [audit_json(e) for e in await self.store.audit_entries(
            audit_query(request.query))]})

    async def dataplanes_insights(self, request: web.Request) -> web.Response:
        """Kuma's combined listing: each Dataplane with what the CP knows about it (certificate, rotation)."""
        offset, size = _page(request)
        mesh = request.match_info["mesh"]
        k = kind_of("dataplane")
        items, total = await self.resources.list(k, mesh, offset, size)
        out = []
        for rec in items:
            insight = await self.store.get("DataplaneInsight", mesh, rec.name)
            out.append({"dataplane": record_to_doc(rec), "dataplaneInsight": insight.doc if insight else {}})
        nxt = str(request.url.with_query({"offset": offset + size, "size": size})) if offset + len(items) < total \
            else None
        return web.json_response({"total": total, "items": out, "next": nxt})

    async def certificate_counts(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        if await self.store.get("Mesh", "", mesh) is None:
            raise NotFound(f'mesh "{mesh}" not found')
        if self.certificates is None:
            return web.json_response({"mesh": mesh})
        return web.json_response(await self.certificates(mesh))

    async def metrics(self, request: web.Request) -> web.Response:
        text = await self.metrics_fn() if self.metrics_fn else ""
        return web.Response(text=text, content_type="text/plain")

    async def status(self, request: web.Request) -> web.Response:
        """This replica and the current leader: which replica runs the singleton jobs (`dpagent cp status`)."""
        if self.status_fn is None:
            raise NotFound("this API has no control-plane status")
        v = await self.status_fn()
        return web.json_response({"instanceId": v.instance_id, "leader": v.leader, "leaderInstance": v.leader_instance,
                                  "leaderSince": v.leader_since, "electionsWon": v.elections_won, "store": v.store,
                                  "storeAvailable": v.store_available})

    async def _mesh(self, request: web.Request) -> str:
        mesh = request.match_info["mesh"]
        if await self.store.get("Mesh", "", mesh) is None:
            raise NotFound(f'mesh "{mesh}" not found')
        return mesh

    async def list_signing_keys(self, request: web.Request) -> web.Response:
        """Serials only: private keys never leave the CP."""
        mesh = await self._mesh(request)
        return web.json_response({"mesh": mesh, "serials": [k.serial for k in await secrets.signing_keys(
            self.store, mesh)]})

    async def rotate_signing_key(self, request: web.Request) -> web.Response:
        """Add serial n+1: new tokens use it, tokens from older keys keep working until those keys are deleted."""
        mesh = await self._mesh(request)
        entry = await self.gate.entry_for(request[PRINCIPAL], "CREATE", "Secret", mesh, "dataplane-token-signing-key",
                                          "rotated the dataplane-token signing key")
        key = await secrets.rotate_signing_key(self.store, mesh, audit=entry)
        log.info("rotated the token signing key", extra={"kv": {"mesh": mesh, "serial": key.serial}})
        return web.json_response({"mesh": mesh, "serial": key.serial}, status=201)

    async def delete_signing_key(self, request: web.Request) -> web.Response:
        mesh = await self._mesh(request)
        try:
            serial = int(request.match_info["serial"])
        except ValueError:
            raise ValidationError("signing key", [("serial", "must be a whole number")]) from None
        entry = await self.gate.entry_for(request[PRINCIPAL], "DELETE", "Secret", mesh,
                                          f"dataplane-token-signing-key-{mesh}-{serial}",
                                          f"deleted dataplane-token signing key {serial}")
        await secrets.delete_signing_key(self.store, mesh, serial, audit=entry)
        return web.json_response({"mesh": mesh, "deleted": serial})

    async def inspect(self, request: web.Request) -> web.Response:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        doc = record_to_doc(await self.resources.get(kind_of("dataplane"), mesh, name))
        if self.inspector is None:
            return web.json_response({"dataplane": doc})
        return web.json_response(to_json(await self.inspector.dataplane(mesh, name, doc)))

    async def inspect_policies(self, request: web.Request) -> web.Response:
        """Kuma's `inspect dataplane --type policies`: each kind's matched policies per inbound and outbound, with
        the conf they produce."""
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        await self.resources.get(kind_of("dataplane"), mesh, name)
        kinds = await self.inspector.policies(mesh, name) if self.inspector else []
        return web.json_response({"mesh": mesh, "dataplane": name, "kinds": to_json(kinds)})

    async def inspect_config(self, request: web.Request) -> web.Response:
        """The Envoy resources the CP generates for the dataplane (`?type=listeners|clusters|routes|...`)."""
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        await self.resources.get(kind_of("dataplane"), mesh, name)
        config = await self.inspector.config(mesh, name, request.query.get("type", "")) if self.inspector else {}
        return web.json_response({"mesh": mesh, "dataplane": name, "resources": config})

    def _affected(self, k: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            """The dataplanes a policy selects (Kuma's `inspect <policy-kind> NAME`)."""
            mesh, name = request.match_info["mesh"], request.match_info["name"]
            await self.resources.get(k, mesh, name)
            if self.inspector is None:
                return web.json_response({"kind": k.name, "mesh": mesh, "name": name, "total": 0, "items": []})
            return web.json_response(to_json(await self.inspector.affected(k.name, mesh, name)))

        return handler


def _user_token_request(body: Any, max_validity: float) -> tuple[str, list[str], float]:
    """name, groups and validity of a user-token request; every problem reported with its field."""

    if not isinstance(body, dict):
        raise ValidationError("user token request", [("$", "must be an object with name, groups and validFor")])
    problems: list[tuple[str, str]] = []
    name, groups, valid_for = body.get("name"), body.get("groups") or [], body.get("validFor") or "24h"
    if not isinstance(name, str) or not name.strip():
        problems.append(("name", "must be the user's name"))
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        problems.append(("groups", "must be a list of group names"))
    elif any(g.startswith("mesh-system:") and g != usertokens.ADMIN_GROUP for g in groups):
        problems.append(("groups", "mesh-system:authenticated and mesh-system:unauthenticated are given by the "
                                   "control plane, not by a token"))
    seconds = 0.0
    if not isinstance(valid_for, str):
        problems.append(("validFor", "must be a duration string like 24h"))
    else:
        seconds = _lifetime(valid_for, max_validity, problems)
    if problems:
        raise ValidationError("user token request", problems)
    return str(name).strip(), list(groups), seconds


def _instant(value: str, field: str) -> float:
    from datetime import datetime

    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValidationError("query", [(field, "must be RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds")]) from None


def audit_query(q: Any) -> AuditQuery:
    problems = [(f, "unknown filter (expected user, kind, mesh, since, until, limit)") for f in q
                if f not in ("user", "kind", "mesh", "since", "until", "limit")]
    try:
        limit = int(q.get("limit", 100))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10_000:
        problems.append(("limit", "must be a whole number between 1 and 10000"))
    if problems:
        raise ValidationError("query", problems)
    kind = q.get("kind", "")
    if kind:
        kind = kind_of(kind).name
    return AuditQuery(who=q.get("user", ""), kind=kind, mesh=q.get("mesh"), limit=limit,
                      since=_instant(q["since"], "since") if q.get("since") else None,
                      until=_instant(q["until"], "until") if q.get("until") else None)


def audit_json(e: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"id": e.id, "time": datetime.fromtimestamp(e.time, UTC).isoformat().replace("+00:00", "Z"),
            "user": e.who, "groups": list(e.groups), "source": e.source, "access": e.access, "kind": e.kind,
            "mesh": e.mesh, "name": e.name, "outcome": e.outcome, "detail": e.detail, "before": e.before,
            "after": e.after}


def _revocation(body: Any, expected: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """A revocation request (dataplane or user token): the body and the ID of the token it names, given as the
    token itself or its `jti`; every field must be a string."""
    if not isinstance(body, dict):
        raise ValidationError("revocation", [("$", f"must be an object with {expected}")])
    problems = [(f, "must be a string") for f in (*extra, "jti", "token")
                if body.get(f) is not None and not isinstance(body[f], str)]
    if problems:
        raise ValidationError("revocation", problems)
    jti = body.get("jti") or (_jti_of(body["token"]) if body.get("token") else None)
    if not jti:
        raise ValidationError("revocation", [("jti", "give the token (token) or its ID (jti)")])
    return body, jti


def _jti_of(token: str) -> str:
    """Read the jti without verifying: revoking a token must work even for one that no longer verifies."""
    import jwt

    try:
        claims = jwt.decode(token.strip().removeprefix("Bearer "), options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise ValidationError("revocation", [("token", f"not a JWT ({e})")]) from None
    jti = claims.get("jti")
    if not isinstance(jti, str):
        raise ValidationError("revocation", [("token", "has no jti claim")])
    return jti


def _token_request_problems(body: dict[str, Any], max_validity: float) -> list[tuple[str, str]]:
    """Every problem of a token request: a token the bootstrap would refuse is never issued."""

    problems: list[tuple[str, str]] = []
    for field in ("name", "mesh"):  # tokens name existing resources: the legacy '_' of older meshes stays usable
        value = body.get(field)
        if value is None or value == "":
            continue
        problem = ref_problem(value)
        if problem:
            problems.append((field, problem))
    tags = body.get("tags")
    if tags is not None and not isinstance(tags, dict):
        problems.append(("tags", "must map each tag to a list of allowed values"))
    for key, values in (tags or {}).items() if isinstance(tags, dict) else ():
        path = f'tags["{key}"]'
        if not TAG_KEY_RE.match(str(key)):
            problems.append((path, "tag name must contain only letters, digits, '.', '-', '_', ':' or '/'"))
        if not isinstance(values, list) or not values or not all(
                isinstance(v, str) and TAG_VALUE_RE.match(v) for v in values):
            problems.append((path, "must be a non-empty list of tag values (letters, digits, '.', '-', '_' or "
                                   "':'; no '/' or '*')"))
    valid_for = body.get("validFor")
    if valid_for is not None and not isinstance(valid_for, str):
        problems.append(("validFor", "must be a duration string like 720h"))
    elif valid_for:
        _lifetime(valid_for, max_validity, problems)
    if (body.get("type") or "dataplane") != "dataplane":
        problems.append(("type", "only 'dataplane' tokens are issued"))
    return problems


def _lifetime(valid_for: str, max_validity: float, problems: list[tuple[str, str]]) -> float:
    """A token's `validFor` in seconds (0 when unusable), every problem with it appended: one cap for user and
    dataplane tokens alike."""
    from dpagent.durations import format_duration

    try:
        seconds = parse_duration(valid_for)
    except ValueError as e:
        problems.append(("validFor", str(e)))
        return 0.0
    if seconds <= 0:
        problems.append(("validFor", "must be greater than zero"))
    elif seconds > max_validity:
        problems.append(("validFor", f"must be at most {format_duration(max_validity)} (the control plane's "
                                     "--max-token-validity)"))
    return seconds
