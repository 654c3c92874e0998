"""RBAC over real HTTP: user tokens, AccessRoles scoped by type, mesh and the services a policy targets, the
audit log, and the route matrix — every registered route × {admin, reader, team-scoped, anonymous remote}.

The API runs with the loopback door closed (`loopback_admin=False`), so the test client on 127.0.0.1 is treated
as a caller from another host would be."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dpagent.controlplane import usertokens
from dpagent.controlplane.api import Api
from dpagent.controlplane.gui.server import Gui, GuiSources
from dpagent.controlplane.inspect import Inspector
from dpagent.controlplane.monitoring import MADS_PATH, MonitoringDiscovery
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.sync import XdsSync

ADMIN = "admin-secret"
MESH = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"]}
READER_ROLE = {"type": "AccessRole", "name": "reader", "rules": [{"access": ["GET"]}]}
TEAM_ROLE = {"type": "AccessRole", "name": "payments-policies", "rules": [
    {"types": ["MeshTimeout", "MeshRetry"], "mesh": "default", "access": ["CREATE", "UPDATE", "DELETE"],
     "when": [{"targetRef": {"kind": "MeshService", "name": "payments*"}}]}]}
BINDING = {"type": "AccessRoleBinding", "name": "teams", "subjects": [
    {"type": "Group", "name": "auditors"}, {"type": "Group", "name": "team-a"}], "roles": ["reader"]}
TEAM_BINDING = {"type": "AccessRoleBinding", "name": "team-a", "subjects": [{"type": "Group", "name": "team-a"}],
                "roles": ["payments-policies"]}


def timeout(name: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTimeout", "mesh": "default", "name": name, "spec": {
        "targetRef": target, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "20s"}}]}}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class Env:
    def __init__(self, client: TestClient[Any, Any], store: MemoryStore, api: Api) -> None:
        self.c, self.store, self.api = client, store, api
        self.tokens: dict[str, str] = {}

    async def user_token(self, name: str, *groups: str, valid_for: str = "1h") -> str:
        r = await self.c.post("/tokens/user", json={"name": name, "groups": list(groups), "validFor": valid_for},
                              headers=bearer(ADMIN))
        assert r.status == 200, await r.text()
        return await r.text()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    store = await MemoryStore.open()
    cache = SnapshotCache()
    sync = XdsSync(store, cache, debounce=0.01)
    inspector = Inspector(store, cache, sync.state)
    api = Api(Resources(store), admin_token=ADMIN, inspector=inspector, loopback_admin=False)
    app = api.app()
    MonitoringDiscovery(store, sync.state, sync.leaving).add_routes(app)
    Gui(GuiSources(store, cache, sync, inspector, ADMIN, store_type="memory", started=1.0)).add_routes(app)
    runner = asyncio.create_task(sync.run())
    async with TestClient(TestServer(app)) as c:
        e = Env(c, store, api)
        for path, doc in (("/meshes/default", MESH), ("/access-roles/reader", READER_ROLE),
                          ("/access-roles/payments-policies", TEAM_ROLE), ("/access-role-bindings/teams", BINDING),
                          ("/access-role-bindings/team-a", TEAM_BINDING)):
            r = await c.put(path, json=doc, headers=bearer(ADMIN))
            assert r.status == 201, await r.text()
        e.tokens = {"admin": ADMIN, "reader": await e.user_token("ann", "auditors"),
                    "team": await e.user_token("john", "team-a")}
        yield e
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await store.close()


async def test_team_scoped_user_edits_only_policies_targeting_its_services(env: Env) -> None:
    john = bearer(env.tokens["team"])
    r = await env.c.put("/meshes/default/meshtimeouts/pay", json=timeout("pay", {"kind": "MeshService",
                                                                               "name": "payments"}), headers=john)
    assert r.status == 201, await r.text()
    r = await env.c.put("/meshes/default/meshtimeouts/bill", json=timeout("bill", {"kind": "MeshService",
                                                                                 "name": "billing"}), headers=john)
    body = await r.json()
    assert r.status == 403 and body["title"] == ('forbidden: john lacks CREATE on MeshTimeout "bill" in mesh '
                                                 '"default" with these targets')
    r = await env.c.put("/meshes/default/meshtimeouts/all", json=timeout("all", {"kind": "Mesh"}), headers=john)
    assert r.status == 403
    # billing's policy, made by the admin, cannot be taken over by pointing it at payments, nor deleted
    await env.c.put("/meshes/default/meshtimeouts/bill", json=timeout("bill", {"kind": "MeshService",
                                                                             "name": "billing"}),
                    headers=bearer(ADMIN))
    r = await env.c.put("/meshes/default/meshtimeouts/bill", json=timeout("bill", {"kind": "MeshService",
                                                                                 "name": "payments-v2"}),
                        headers=john)
    assert r.status == 403
    assert (await env.c.delete("/meshes/default/meshtimeouts/bill", headers=john)).status == 403
    # other kinds and other meshes are out of reach; its own policy it may delete
    r = await env.c.put("/meshes/default/meshtrafficpermissions/x", json={}, headers=john)
    assert r.status == 403 and "lacks CREATE on MeshTrafficPermission" in (await r.json())["title"]
    assert (await env.c.delete("/meshes/default/meshtimeouts/pay", headers=john)).status == 200
    # the audit log tells the story, newest first
    r = await env.c.get("/audit", params={"user": "john", "kind": "MeshTimeout"}, headers=bearer(ADMIN))
    entries = [(e["access"], e["name"], e["outcome"]) for e in (await r.json())["items"]]
    assert entries == [("DELETE", "pay", "allowed"), ("DELETE", "bill", "denied"), ("UPDATE", "bill", "denied"),
                       ("CREATE", "all", "denied"), ("CREATE", "bill", "denied"), ("CREATE", "pay", "allowed")]
    first = (await r.json())["items"][-1]
    assert first["groups"] == ["team-a", "mesh-system:authenticated"] and first["source"] == "127.0.0.1"
    assert first["after"].startswith("sha256:") and first["before"] == ""


async def test_reader_gets_everything_but_writes_nothing(env: Env) -> None:
    ann = bearer(env.tokens["reader"])
    for path in ("/meshes", "/meshes/default", "/meshes/default/meshtimeouts", "/access-roles", "/audit",
                 "/meshtimeouts", "/gui/api/overview"):
        r = await env.c.get(path, headers=ann)
        assert r.status == 200, (path, await r.text())
    r = await env.c.put("/meshes/default/meshtimeouts/pay", json=timeout("pay", {"kind": "MeshService",
                                                                               "name": "payments"}), headers=ann)
    assert r.status == 403 and (await r.json())["title"] == ('forbidden: ann lacks CREATE on MeshTimeout "pay" in '
                                                             'mesh "default"')
    r = await env.c.post("/tokens/dataplane", json={"mesh": "default", "validFor": "1h"}, headers=ann)
    assert r.status == 403 and "GENERATE_DATAPLANE_TOKEN" in (await r.json())["title"]
    assert (await env.c.delete("/meshes/default", headers=ann)).status == 403
    assert (await env.c.get("/meshes/default/secrets", headers=ann)).status == 403  # VIEW_SECRETS, not GET


async def test_token_failures_are_401_with_the_reason(env: Env) -> None:
    token = env.tokens["reader"]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "Groups": ["mesh-system:admin"]}).encode()).decode()
    r = await env.c.get("/meshes", headers=bearer(f"{head}.{forged.rstrip('=')}.{sig}"))
    assert r.status == 401 and "signature does not match" in (await r.json())["title"]
    key = await usertokens.ensure_signing_key(env.store)
    expired = usertokens.issue(key, name="ann", groups=["auditors"], valid_for=60, now=time.time() - 3600)
    r = await env.c.get("/meshes", headers=bearer(expired))
    assert r.status == 401 and "user token of ann expired" in (await r.json())["title"]
    r = await env.c.post("/tokens/dataplane", json={"mesh": "default", "validFor": "1h"}, headers=bearer(ADMIN))
    dp_token = await r.text()
    r = await env.c.get("/meshes", headers=bearer(dp_token))
    assert r.status == 401 and "this is a dataplane token" in (await r.json())["title"]
    assert (await env.c.get("/meshes", headers=bearer(token))).status == 200
    r = await env.c.post("/tokens/user/revocations", json={"token": token}, headers=bearer(ADMIN))
    assert r.status == 200
    r = await env.c.get("/meshes", headers=bearer(token))
    assert r.status == 401 and "has been revoked" in (await r.json())["title"]


async def test_user_key_rotation_keeps_old_tokens_until_the_key_is_deleted(env: Env) -> None:
    old = env.tokens["reader"]
    r = await env.c.post("/user-token-signing-keys", headers=bearer(ADMIN))
    assert r.status == 201 and (await r.json())["serial"] == 2
    new = await env.user_token("ann", "auditors")
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == "2"
    assert (await env.c.get("/meshes", headers=bearer(old))).status == 200
    assert (await env.c.delete("/user-token-signing-keys/2", headers=bearer(ADMIN))).status == 400  # the newest
    assert (await env.c.delete("/user-token-signing-keys/1", headers=bearer(ADMIN))).status == 200
    r = await env.c.get("/meshes", headers=bearer(old))
    assert r.status == 401 and "KID 1" in (await r.json())["title"]
    assert (await env.c.get("/meshes", headers=bearer(new))).status == 200
    r = await env.c.get("/audit", params={"kind": "GlobalSecret"}, headers=bearer(ADMIN))
    assert [(e["access"], e["outcome"], e["detail"]) for e in (await r.json())["items"]] == [
        ("DELETE", "allowed", "deleted user-token signing key 1"),
        ("DELETE", "failed", "user-token signing key 2 is the newest; rotate first, then delete the old one"),
        ("CREATE", "allowed", "rotated the user-token signing key")]
    assert all(e["before"] == e["after"] == "" for e in (await r.json())["items"])  # no digests of secrets


async def test_token_requests_report_every_problem(env: Env) -> None:
    r = await env.c.post("/tokens/user", json={"name": "", "groups": ["mesh-system:authenticated"],
                                               "validFor": "forever"}, headers=bearer(ADMIN))
    assert r.status == 400
    assert [c["field"] for c in (await r.json())["causes"]] == ["name", "groups", "validFor"]
    r = await env.c.post("/tokens/user", json={"name": "x"}, headers=bearer(env.tokens["team"]))
    assert r.status == 403 and "GENERATE_USER_TOKEN" in (await r.json())["title"]


async def test_access_role_validation_lists_every_violation(env: Env) -> None:
    bad = {"type": "AccessRole", "name": "bad", "rules": [
        {"types": ["Nope"], "access": ["FLY"], "when": [{"targetRef": {"name": "x"}, "to": {}}], "extra": 1}]}
    r = await env.c.put("/access-roles/bad", json=bad, headers=bearer(ADMIN))
    assert r.status == 400
    assert [c["field"] for c in (await r.json())["causes"]] == [
        "rules[0].extra", "rules[0].types[0]", "rules[0].access[0]", "rules[0].when[0]",
        "rules[0].when[0].targetRef.kind", "rules[0].when[0].to.targetRef"]


async def test_access_audit_chooses_what_is_recorded(env: Env) -> None:
    audit = {"type": "AccessAudit", "name": "secrets-only", "rules": [{"types": ["Secret"], "accessAll": True}]}
    assert (await env.c.put("/access-audits/secrets-only", json=audit, headers=bearer(ADMIN))).status == 201
    before = len((await (await env.c.get("/audit", headers=bearer(ADMIN))).json())["items"])
    r = await env.c.put("/meshes/default/meshtimeouts/pay", json=timeout("pay", {"kind": "MeshService",
                                                                               "name": "payments"}),
                        headers=bearer(ADMIN))
    assert r.status == 201
    secret = {"type": "Secret", "mesh": "default", "name": "s", "data": "c2VjcmV0"}
    assert (await env.c.put("/meshes/default/secrets/s", json=secret, headers=bearer(ADMIN))).status == 201
    items = (await (await env.c.get("/audit", headers=bearer(ADMIN))).json())["items"]
    assert len(items) == before + 1 and (items[0]["kind"], items[0]["name"]) == ("Secret", "s")
    # accessAll includes reads: reading the secret is recorded too (and reading the log is not: another type)
    assert (await env.c.get("/meshes/default/secrets/s", headers=bearer(env.tokens["reader"]))).status == 403
    assert (await env.c.get("/meshes/default/secrets/s", headers=bearer(ADMIN))).status == 200
    items = (await (await env.c.get("/audit", params={"kind": "Secret"}, headers=bearer(ADMIN))).json())["items"]
    assert [(e["user"], e["access"], e["outcome"]) for e in items[:3]] == [
        ("admin", "VIEW_SECRETS", "allowed"), ("ann", "VIEW_SECRETS", "denied"), ("admin", "CREATE", "allowed")]


# ---- the route matrix ------------------------------------------------------------------------------------------

PUBLIC = {("GET", "/"), ("GET", "/gui/login"), ("POST", "/gui/login"), ("POST", "/gui/logout"),
          ("GET", "/gui/static/{name}")}
NEEDS_VIEW_SECRETS = {"/secrets", "/meshes/{mesh}/secrets", "/meshes/{mesh}/secrets/{name}", "/global-secrets",
                      "/global-secrets/{name}", "/meshes/{mesh}/signing-keys", "/user-token-signing-keys"}
NEEDS_VIEW_CONFIG = {"/meshes/{mesh}/dataplanes/{name}/_config", "/gui/api/dataplanes/{mesh}/{name}"}
READS_OVER_POST = {MADS_PATH}
TEAM_WRITES = {"/meshes/{mesh}/meshtimeouts/{name}", "/meshes/{mesh}/meshretries/{name}"}
GUI_PAGES = {"/gui", "/gui/"}


def expected(who: str, method: str, path: str) -> str:
    """The permission matrix of docs/rbac.md, written out independently of authz_routes.py."""
    if (method, path) in PUBLIC:
        return "allowed"
    if who == "anonymous":
        return "login" if method == "GET" and path in GUI_PAGES else "401"
    if who == "admin":
        return "allowed"
    read = method == "GET" or path in READS_OVER_POST
    if read:
        return "403" if path in NEEDS_VIEW_SECRETS | NEEDS_VIEW_CONFIG else "allowed"
    if who == "team" and path in TEAM_WRITES:
        return "allowed"
    return "403"


def outcome(status: int, location: str) -> str:
    if status in (401, 403):
        return str(status)
    if status == 303 and location == "/gui/login":
        return "login"
    return "allowed"


def concrete(path: str) -> str:
    return (path.replace("{mesh}", "default").replace("{serial}", "1").replace("{kind}", "MeshTimeout")
            .replace("/gui/static/{name}", "/gui/static/app.css").replace("{name}", "x"))


async def test_every_route_for_every_kind_of_caller(env: Env) -> None:
    routes = sorted({(r.method, r.resource.canonical) for r in env.c.app.router.routes()  # type: ignore[union-attr]
                     if r.resource is not None and r.method != "HEAD"})
    assert len(routes) > 100  # every kind's routes, tokens, inspect, discovery, GUI
    body = timeout("x", {"kind": "MeshService", "name": "payments"})
    table: list[str] = []
    wrong = []
    for method, path in routes:
        for m in (("GET", "PUT", "DELETE") if method == "*" else (method,)):
            for who in ("admin", "reader", "team", "anonymous"):
                headers = bearer(env.tokens[who]) if who != "anonymous" else {}
                kw: dict[str, Any] = {"json": body} if m in ("PUT", "POST") else {}
                if path == MADS_PATH:
                    kw = {"json": {}}
                r = await env.c.request(m, concrete(path), headers=headers, allow_redirects=False, **kw)
                text = await r.text()
                assert "has no authorization rule" not in text, f"{m} {path}: {text}"
                got, want = outcome(r.status, r.headers.get("Location", "")), expected(who, m, path)
                if want == "allowed" and got == "login" and (m, path) in PUBLIC:
                    got = "allowed"  # logging out sends everyone to the login page
                table.append(f"{m:6} {path:60} {who:9} {got}")
                if got != want:
                    wrong.append(f"{m} {path} as {who}: expected {want}, got {got} ({r.status} {text[:120]})")
    assert not wrong, "\n".join(wrong)


async def test_a_route_without_a_rule_is_refused() -> None:
    store = await MemoryStore.open()
    api = Api(Resources(store), admin_token=ADMIN, loopback_admin=False)
    app = api.app()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="should not be reached")

    app.router.add_get("/brand-new", handler)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/brand-new", headers=bearer(ADMIN))
        assert r.status == 500 and "GET /brand-new has no authorization rule" in (await r.json())["title"]
    await store.close()
