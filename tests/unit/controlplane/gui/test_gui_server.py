"""The GUI's HTTP side on the real API app: every page's JSON endpoint, the version that moves with the store, the
static assets and their CSP, and authentication away from loopback (login page, a cookie that opens reads under
/gui only, never a write)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dpagent.controlplane import authz as api_mod
from dpagent.controlplane.api import Api
from dpagent.controlplane.gui.server import COOKIE, Gui, GuiSources, session_value
from dpagent.controlplane.identity import Issuer
from dpagent.controlplane.inspect import Inspector
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.snapshot import CLUSTER
from dpagent.controlplane.xds.sync import XdsSync

TOKEN = "admin-token-for-tests"
MESH = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"],
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dp(name: str, service: str, port: int) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]}}


def mtp(name: str, target: dict[str, Any], action: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name,
            "spec": {"targetRef": target, "from": [{"targetRef": source, "default": {"action": action}}]}}


@pytest.fixture
async def env() -> AsyncIterator[tuple[TestClient[Any, Any], SnapshotCache, MemoryStore]]:
    store = await MemoryStore.open()
    cache = SnapshotCache()
    issuer = Issuer(store)
    sync = XdsSync(store, cache, bundle=issuer.bundle)
    inspector = Inspector(store, cache, sync.state)
    api = Api(Resources(store), admin_token=TOKEN, inspector=inspector)
    app = api.app()
    Gui(GuiSources(store, cache, sync, inspector, TOKEN, store_type="memory", started=1.0,
                   versions={"default.web-1": {"agent": "0.1.0", "envoy": "1.34.0"}})).add_routes(app)
    running = asyncio.create_task(sync.run())
    async with TestClient(TestServer(app)) as c:
        for path, doc in (("/meshes/default", MESH),
                          ("/meshes/default/dataplanes/backend-1", dp("backend-1", "backend", 8080)),
                          ("/meshes/default/dataplanes/web-1", dp("web-1", "web", 8081)),
                          ("/meshes/default/meshtrafficpermissions/allow-all",
                           mtp("allow-all", {"kind": "Mesh"}, "Allow", {"kind": "Mesh"}))):
            r = await c.put(path, json=doc)
            assert r.status == 201, await r.text()
        for _ in range(200):  # sync applies the store's events a debounce later; pages read what it built
            state = await sync.state("default")
            if state and len(state.by_name) == 2 and state.ctx.parsed_policies.get("MeshTrafficPermission"):
                break
            await asyncio.sleep(0.01)
        yield c, cache, store
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await store.close()


async def get(client: TestClient[Any, Any], path: str) -> Any:
    r = await client.get(path)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_every_page_endpoint_answers_with_the_mesh(env) -> None:
    client, cache, _ = env
    cache.stream_opened("default.web-1")
    cache.record_nack("default.web-1", CLUSTER, "2", "cluster rejected")
    ov = await get(client, "/gui/api/overview")
    assert ov["cp"]["store"] == "memory" and ov["cp"]["leader"] == "single replica"
    (m,) = ov["meshes"]
    assert (m["dataplanes"], m["online"], m["offline"], m["nacking"], m["services"]) == (2, 1, 1, 1, 2)
    assert m["policies"] == {"MeshTrafficPermission": 1}
    rows = {r["name"]: r for r in (await get(client, "/gui/api/dataplanes"))["items"]}
    assert rows["web-1"]["status"] == "nacking" and rows["web-1"]["last_nack"]["error"] == "cluster rejected"
    assert rows["web-1"]["envoy_version"] == "1.34.0" and rows["backend-1"]["status"] == "offline"
    detail = await get(client, "/gui/api/dataplanes/default/web-1")
    kinds = {k["kind"]: k for k in detail["inspect"]["policies"]}
    assert kinds["MeshTrafficPermission"]["policies"] == ["allow-all"]
    assert set(detail["config"]) == {"listeners", "clusters", "routes", "endpoints", "secrets"}
    assert [e["event"] for e in detail["history"]] == ["connected"]
    svc = await get(client, "/gui/api/services/default")
    assert svc["matrix"]["decisions"]["web"]["backend"] == "allow"
    pol = await get(client, "/gui/api/policies")
    assert [p["name"] for p in pol["kinds"]["MeshTrafficPermission"]] == ["allow-all"]
    one = await get(client, "/gui/api/policies/default/MeshTrafficPermission/allow-all")
    assert "action: Allow" in one["yaml"] and [a["name"] for a in one["affected"]] == ["backend-1", "web-1"]
    certs = await get(client, "/gui/api/certificates")
    (c,) = certs["meshes"]
    assert [b["name"] for b in c["backends"]] == ["ca-1"] and c["progress"]["enabled"] == "ca-1"
    assert "does not exist" in (await get(client, "/gui/api/dataplanes/default/nope"))["missing"]
    assert "does not exist" in (await get(client, "/gui/api/policies/default/MeshTrafficPermission/x"))["missing"]
    assert (await client.get("/gui/api/policies/default/Nope/x")).status == 404


async def test_a_deny_changes_the_version_and_the_matrix(env) -> None:
    client, _, _ = env
    before = (await get(client, "/gui/api/version"))["version"]
    await get(client, "/gui/api/services/default")
    r = await client.put("/meshes/default/meshtrafficpermissions/deny-web", json=mtp(
        "deny-web", {"kind": "MeshService", "name": "backend"}, "Deny", {"kind": "MeshService", "name": "web"}))
    assert r.status == 201
    assert (await get(client, "/gui/api/version"))["version"] != before
    deadline = asyncio.get_running_loop().time() + 2
    while True:  # sync applies the event in its own loop, a debounce later
        matrix = (await get(client, "/gui/api/services/default"))["matrix"]
        if matrix["decisions"]["web"]["backend"] == "deny" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert matrix["decisions"]["web"]["backend"] == "deny"
    assert matrix["policies"]["backend"] == ["allow-all", "deny-web"]
    assert matrix["decisions"]["backend"]["web"] == "allow"


async def test_assets_come_from_the_package_with_a_strict_csp(env) -> None:
    client, _, _ = env
    r = await client.get("/gui/", allow_redirects=False)
    assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
    html = await r.text()
    assert "/gui/static/app.js" in html and "http://" not in html and "https://" not in html
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = await client.get(f"/gui/static/{name}")
        assert r.status == 200 and r.content_type == ctype
        assert "https://" not in await r.text(), f"{name} must not reach out of the package"
    assert (await client.get("/gui/static/index.html")).status == 404
    assert (await client.get("/gui/static/../api.py")).status == 404
    r = await client.get("/gui", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/gui/"


async def test_away_from_loopback_the_login_cookie_opens_reads_under_gui_only(env, monkeypatch) -> None:
    client, _, _ = env
    monkeypatch.setattr(api_mod, "is_loopback", lambda _remote: False)
    assert (await client.get("/gui/api/overview")).status == 401
    r = await client.get("/gui/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/gui/login"
    assert (await client.get("/gui/login")).status == 200
    assert (await client.get("/gui/static/app.css")).status == 200
    r = await client.post("/gui/login", data={"token": "wrong"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/gui/login?failed=1" and COOKIE not in r.cookies
    assert "login-error" in await (await client.get("/gui/login?failed=1")).text()
    r = await client.post("/gui/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/gui/"
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/gui" in set_cookie
    assert TOKEN not in set_cookie and r.cookies[COOKIE].value == session_value(TOKEN)
    client.session.cookie_jar.clear()  # from here on, only the cookie each request names
    assert (await client.get("/gui/api/overview")).status == 401
    cookie = {"Cookie": f"{COOKIE}={session_value(TOKEN)}"}
    assert (await client.get("/gui/api/overview", headers=cookie)).status == 200
    assert (await client.get("/gui/", headers=cookie, allow_redirects=False)).status == 200
    # the cookie is no key to the API: not for reads outside /gui, never for writes
    assert (await client.get("/meshes/default/dataplanes", headers=cookie)).status == 401
    r = await client.put("/meshes/default/meshtrafficpermissions/x", headers=cookie, json=mtp(
        "x", {"kind": "Mesh"}, "Deny", {"kind": "Mesh"}))
    assert r.status == 401
    bad = {"Cookie": f"{COOKIE}={session_value('another-token')}"}
    assert (await client.get("/gui/api/overview", headers=bad)).status == 401
    r = await client.post("/gui/logout", headers=cookie, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/gui/login"
    assert 'dpagent_gui=""' in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/gui/api/overview", headers=bearer)).status == 200


def test_the_cache_counts_what_a_viewer_sees_and_keeps_a_short_connection_history() -> None:
    clock = iter(float(t) for t in range(100, 200))
    cache = SnapshotCache(clock=lambda: next(clock))
    seen = [cache.changes]
    for step in (lambda: cache.stream_opened("n"), lambda: cache.record_ack("n", CLUSTER, "1"),
                 lambda: cache.record_nack("n", CLUSTER, "2", "bad"), lambda: cache.stream_closed("n")):
        step()
        seen.append(cache.changes)
    assert seen == sorted(set(seen)), "every step moves the counter"
    for _ in range(30):
        cache.stream_opened("n")
        cache.stream_closed("n")
    history = cache.history("n")
    assert len(history) == 20 and history[-1][1] == "disconnected" and history[-2][1] == "connected"
    assert [t for t, _ in history] == sorted(t for t, _ in history)
    assert cache.history("never") == []


async def test_the_audit_page_lists_the_writes_newest_first(env) -> None:
    client, _, _ = env
    items = (await get(client, "/gui/api/audit"))["items"]
    assert [(e["access"], e["kind"], e["name"], e["outcome"], e["user"]) for e in items] == [
        ("CREATE", "MeshTrafficPermission", "allow-all", "allowed", "admin"),
        ("CREATE", "Dataplane", "web-1", "allowed", "admin"),
        ("CREATE", "Dataplane", "backend-1", "allowed", "admin"),
        ("CREATE", "Mesh", "default", "allowed", "admin")]
