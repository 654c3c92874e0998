"""`inspect` over the real REST API: matched policies per kind (the bug: always `-`), the NACK the cache recorded
(the bug: never shown), policies per inbound with their conf, the generated config, and a policy's dataplanes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dpagent.controlplane.api import Api
from dpagent.controlplane.inspect import Inspector
from dpagent.controlplane.policies.registry import PLUGINS
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.snapshot import LISTENER
from dpagent.controlplane.xds.sync import XdsSync

MESH = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"],  # only this file's policies
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dp(name: str, service: str, port: int) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "labels": {"app": service},
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]}}


def mtp(name: str, target: dict[str, Any], action: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name,
            "spec": {"targetRef": target, "from": [{"targetRef": source, "default": {"action": action}}]}}


@pytest.fixture
async def env() -> AsyncIterator[tuple[TestClient[Any, Any], SnapshotCache]]:
    store = await MemoryStore.open()
    cache = SnapshotCache(clock=lambda: 1_700_000_000.0)
    sync = XdsSync(store, cache)
    api = Api(Resources(store), admin_token="t", inspector=Inspector(store, cache, sync.state))
    async with TestClient(TestServer(api.app())) as c:
        for path, doc in (
                ("/meshes/default", MESH),
                ("/meshes/default/dataplanes/backend-1", dp("backend-1", "backend", 8080)),
                ("/meshes/default/dataplanes/web-1", dp("web-1", "web", 8081)),
                ("/meshes/default/meshtrafficpermissions/allow-all",
                 mtp("allow-all", {"kind": "Mesh"}, "Allow", {"kind": "Mesh"})),
                ("/meshes/default/meshtrafficpermissions/deny-web",
                 mtp("deny-web", {"kind": "MeshService", "name": "backend"}, "Deny",
                     {"kind": "MeshService", "name": "web"}))):
            r = await c.put(path, json=doc)
            assert r.status == 201, await r.text()
        yield c, cache
    await store.close()


async def test_inspect_names_matched_policies_and_the_nack(env) -> None:
    client, cache = env
    cache.stream_opened("default.backend-1")
    cache.record_sent("default.backend-1", LISTENER, "v1", "n1")
    cache.record_nack("default.backend-1", LISTENER, "v1", "invalid listener")
    data = await (await client.get("/meshes/default/dataplanes/backend-1/_inspect")).json()
    assert [(k["kind"], k["policies"]) for k in data["policies"]] == [  # every registered kind, in order
        (p.kind, ["allow-all", "deny-web"] if p.kind == "MeshTrafficPermission" else []) for p in PLUGINS]
    assert data["xds"]["connected"] is True and data["xds"]["since"] == 1_700_000_000.0
    assert data["xds"]["types"][LISTENER]["nack"] == {"version": "v1", "error": "invalid listener",
                                                      "at": 1_700_000_000.0}
    assert data["dataplane"]["name"] == "backend-1" and data["certificate"] is None


async def test_policies_view_gives_each_inbound_its_policies_and_conf(env) -> None:
    client, _ = env
    data = await (await client.get("/meshes/default/dataplanes/backend-1/_policies")).json()
    (mtp_view,) = [k for k in data["kinds"] if k["kind"] == "MeshTrafficPermission"]
    (inbound,) = mtp_view["inbounds"]
    assert inbound["inbound"] == "10.0.0.1:8080" and inbound["policies"] == ["allow-all", "deny-web"]
    assert inbound["conf"]["from"] == [
        {"from": "MeshService(web)", "action": "Deny", "policy": "deny-web", "services": ["web"]},
        {"from": "Mesh", "action": "Allow", "policy": "allow-all", "services": None}]


async def test_config_view_returns_generated_resources_by_type(env) -> None:
    client, _ = env
    data = await (await client.get("/meshes/default/dataplanes/backend-1/_config?type=routes")).json()
    routes = data["resources"]
    assert list(routes) == ["routes"] and "inbound:10.0.0.1:8080" in routes["routes"]
    per_filter = routes["routes"]["inbound:10.0.0.1:8080"]["virtualHosts"][0]["routes"][0]["typedPerFilterConfig"]
    assert set(per_filter) == {"dpagent.mtp.allow", "dpagent.mtp.deny"}
    everything = await (await client.get("/meshes/default/dataplanes/backend-1/_config")).json()
    assert set(everything["resources"]) == {"listeners", "clusters", "routes", "endpoints", "secrets"}
    bad = await client.get("/meshes/default/dataplanes/backend-1/_config?type=bogus")
    assert bad.status == 400 and (await bad.json())["causes"][0]["field"] == "type"


async def test_policy_lists_the_dataplanes_it_affects(env) -> None:
    client, _ = env
    data = await (await client.get("/meshes/default/meshtrafficpermissions/deny-web/_resources/dataplanes")).json()
    assert data["total"] == 1 and data["items"] == [{"name": "backend-1", "inbounds": ["10.0.0.1:8080"]}]
    everyone = await (await client.get(
        "/meshes/default/meshtrafficpermissions/allow-all/_resources/dataplanes")).json()
    assert [i["name"] for i in everyone["items"]] == ["backend-1", "web-1"]
    missing = await client.get("/meshes/default/meshtrafficpermissions/nope/_resources/dataplanes")
    assert missing.status == 404


async def test_unknown_dataplane_is_404_everywhere(env) -> None:
    client, _ = env
    for view in ("_inspect", "_policies", "_config"):
        r = await client.get(f"/meshes/default/dataplanes/ghost/{view}")
        assert r.status == 404, view
