"""MeshTimeout validation (Kuma docs' YAML accepted unchanged, bad specs refused at exact paths), merging with
Kuma's defaults, `inspect` views, and the initial policies a new Mesh gets through the REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from policylib import MESH, assert_refused_at, policy_doc

from dpagent.controlplane.api import Api
from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.meshtimeout.plugin import MeshTimeoutPlugin, TimeoutRules
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore

PLUGIN = MeshTimeoutPlugin()

# Kuma's documentation examples (Universal), unchanged.
KUMA_DOCS = """
type: MeshTimeout
name: timeout-global
mesh: default
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        idleTimeout: 20s
        connectionTimeout: 2s
        http:
          requestTimeout: 2s
---
type: MeshTimeout
name: timeout-inbound
mesh: default
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: backend
  rules:
    - default:
        idleTimeout: 20s
        http:
          requestTimeout: 2s
          streamIdleTimeout: 1h
          maxStreamDuration: 0s
          maxConnectionDuration: 0s
          requestHeadersTimeout: 2s
---
type: MeshTimeout
name: backend-timeouts
mesh: default
spec:
  targetRef:
    kind: MeshSubset
    tags:
      kuma.io/zone: east
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default: {connectionTimeout: 2s, idleTimeout: 20m, http: {requestTimeout: 5s, streamIdleTimeout: 1m}}
  from:
    - targetRef:
        kind: Mesh
      default: {http: {requestTimeout: 30s}}
"""


@pytest.mark.parametrize("doc", list(yaml.safe_load_all(KUMA_DOCS)), ids=lambda d: d["name"])
def test_kuma_docs_yaml_is_accepted(doc: dict[str, Any]) -> None:
    assert PLUGIN.validate(doc) == []
    assert PLUGIN.parse(doc).name == doc["name"]


def _mt(spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTimeout", "mesh": "default", "name": "bad", "spec": {"targetRef": {"kind": "Mesh"}, **spec}}


def _to(conf: dict[str, Any]) -> dict[str, Any]:
    return policy_doc("MeshTimeout", conf, top=MESH)


BAD: list[tuple[dict[str, Any], set[str]]] = [
    (_to({"connectionTimeout": "-1s"}), {"spec.to[0].default.connectionTimeout"}),
    (_to({"connectionTimeout": "0s"}), {"spec.to[0].default.connectionTimeout"}),
    (_to({"idleTimeout": "soon", "http": {"requestTimeout": "-5s", "streamIdleTimeout": 3}}),
     {"spec.to[0].default.idleTimeout", "spec.to[0].default.http.requestTimeout",
      "spec.to[0].default.http.streamIdleTimeout"}),
    (_to({}), {"spec.to[0].default"}),
    (_to({"http": {"requestHeadersTimeout": "1s"}}), {"spec.to[0].default.http"}),
    (_to({"retries": 3, "idleTimeout": "1s"}), {"spec.to[0].default.retries"}),
    (_mt({"from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"idleTimeout": "1s"}}]}),
     {"spec.from[0].targetRef.kind"}),
    (_mt({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}],
          "rules": [{"default": {"idleTimeout": "1s"}}]}), {"spec.rules"}),
    (_mt({}), {"spec"}),
]


@pytest.mark.parametrize(("doc", "paths"), BAD)
def test_bad_specs_are_refused_with_every_path(doc: dict[str, Any], paths: set[str]) -> None:
    assert_refused_at(PLUGIN.validate(doc), paths)


def test_unset_fields_take_kuma_defaults_and_inspect_shows_durations() -> None:
    rules = TimeoutRules(to=(Item("all", 0, 0, {"http": {"requestTimeout": "15s"}}, TargetRef("Mesh")),
                             Item("be", 1, 0, {"http": {"requestTimeout": "1s"}}, TargetRef("MeshService", "be"))))
    assert rules.outbound_conf("be") == {"connectionTimeout": "5s", "idleTimeout": "1h",
                                         "http": {"requestTimeout": "1s", "streamIdleTimeout": "30m",
                                                  "maxStreamDuration": "0s", "maxConnectionDuration": "0s"}}
    assert rules.outbound_conf("web")["http"]["requestTimeout"] == "15s"


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryStore]]:
    store = await MemoryStore.open()
    async with TestClient(TestServer(Api(Resources(store), admin_token="t").app())) as c:
        c.session.headers["Authorization"] = "Bearer t"
        yield c, store
    await store.close()


async def _names(c: TestClient[Any, Any], mesh: str) -> list[str]:
    r = await c.get(f"/meshes/{mesh}/meshtimeouts")
    assert r.status == 200, await r.text()
    return sorted(i["name"] for i in (await r.json())["items"])


async def test_new_mesh_gets_kuma_default_timeouts(client) -> None:
    c, _ = client
    assert (await c.put("/meshes/m1", json={"type": "Mesh", "name": "m1"})).status == 201
    assert await _names(c, "m1") == ["mesh-gateways-timeout-all-m1", "mesh-timeout-all-m1"]
    doc = await (await c.get("/meshes/m1/meshtimeouts/mesh-timeout-all-m1")).json()
    assert doc["spec"]["to"][0]["default"]["http"]["requestTimeout"] == "15s"


@pytest.mark.parametrize("skip", [["*"], ["MeshTimeout"]])
async def test_skip_creating_initial_policies(client, skip: list[str]) -> None:
    c, _ = client
    r = await c.put("/meshes/m2", json={"type": "Mesh", "name": "m2", "skipCreatingInitialPolicies": skip})
    assert r.status == 201, await r.text()
    assert await _names(c, "m2") == []


async def test_initial_policies_only_on_creation_and_existing_ones_are_kept(client) -> None:
    """Creating is idempotent: a policy of that name that exists is the user's and is not overwritten; updating
    the Mesh does not re-create a default the user deleted."""
    c, store = client
    mine = {"type": "MeshTimeout", "mesh": "m3", "name": "mesh-timeout-all-m3",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                                                             "default": {"http": {"requestTimeout": "3s"}}}]}}
    await store.upsert("Mesh", "", "m3", {"type": "Mesh", "name": "m3"})  # the mesh row before its policies
    await store.upsert("MeshTimeout", "m3", mine["name"], mine)
    await store.delete("Mesh", "", "m3")
    assert (await c.put("/meshes/m3", json={"type": "Mesh", "name": "m3"})).status == 201
    doc = await (await c.get("/meshes/m3/meshtimeouts/mesh-timeout-all-m3")).json()
    assert doc["spec"]["to"][0]["default"] == {"http": {"requestTimeout": "3s"}}
    assert (await c.delete("/meshes/m3/meshtimeouts/mesh-gateways-timeout-all-m3")).status == 200
    assert (await c.put("/meshes/m3", json={"type": "Mesh", "name": "m3", "labels": {"a": "b"}})).status == 200
    assert await _names(c, "m3") == ["mesh-timeout-all-m3"]


async def test_inspect_shows_effective_timeouts_per_outbound_and_inbound() -> None:
    from dpagent.controlplane.inspect import Inspector
    from dpagent.controlplane.xds.cache import SnapshotCache
    from dpagent.controlplane.xds.sync import XdsSync

    store = await MemoryStore.open()
    cache = SnapshotCache(clock=lambda: 1.0)
    sync = XdsSync(store, cache)
    api = Api(Resources(store), admin_token="t", inspector=Inspector(store, cache, sync.state))
    web = {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
        "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}}
    override = {"type": "MeshTimeout", "mesh": "default", "name": "backend-1s", "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                               "default": {"http": {"requestTimeout": "1s"}}}]}}
    async with TestClient(TestServer(api.app())) as c:
        c.session.headers["Authorization"] = "Bearer t"
        for path, doc in (("/meshes/default", {"type": "Mesh", "name": "default"}),
                          ("/meshes/default/dataplanes/web-1", web),
                          ("/meshes/default/meshtimeouts/backend-1s", override)):
            assert (await c.put(path, json=doc)).status == 201
        data = await (await c.get("/meshes/default/dataplanes/web-1/_inspect")).json()
    await store.close()
    mt = next(k for k in data["policies"] if k["kind"] == "MeshTimeout")
    assert sorted(mt["policies"]) == ["backend-1s", "mesh-timeout-all-default"]
    outbound = mt["outbounds"][0]
    assert outbound["conf"]["http"]["requestTimeout"] == "1s" and outbound["conf"]["connectionTimeout"] == "5s"
    inbound = mt["inbounds"][0]["conf"]
    assert inbound["http"]["requestTimeout"] == "0s" and inbound["idleTimeout"] == "2h"
