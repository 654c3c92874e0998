"""The registry is the one kind list: every registered policy kind is accepted by the REST API, listed, known to
the CLI by its names and aliases, watched by sync, and changes the generated config of a proxy it selects.

A kind added to the registry without a SAMPLE here fails test_every_registered_kind_has_a_sample, so the
registry-driven checks below always cover every kind.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from unit.controlplane.xds._xds_testlib import envoy_accepts

from dpagent.controlplane.api import Api
from dpagent.controlplane.kinds import kind_of
from dpagent.controlplane.policies.registry import PLUGINS, POLICY_KINDS, check
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.context import build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.sync import CONFIG_KINDS, XdsSync, proxy_snapshot

MESH = {"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dp(name: str, service: str, port: int) -> dict[str, Any]:
    # backend calls the external service "sample" too, so a MeshExternalService of that name reaches only it.
    external = [{"port": 30000, "backendRef": {"kind": "MeshExternalService", "name": "sample"}}] \
        if service == "backend" else []
    return {"type": "Dataplane", "mesh": "default", "name": name, "labels": {"app": service},
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}],
                "outbound": [{"port": 20000 + port, "tags": {"kuma.io/service": "web"}}, *external]}}


# kind → a policy that changes the config of dataplane "backend-1" (selected through its labels).
SAMPLES: dict[str, dict[str, Any]] = {
    "MeshPassthrough": {"type": "MeshPassthrough", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "default": {"passthroughMode": "Matched", "appendMatch": [{"type": "CIDR", "value": "10.10.0.0/16"}]}}},
    "MeshExternalService": {"type": "MeshExternalService", "mesh": "default", "name": "sample", "spec": {
        "match": {"type": "HostnameGenerator", "port": 443, "protocol": "tcp"},
        "endpoints": [{"address": "example.com", "port": 443}]}},
    "MeshHTTPRoute": {"type": "MeshHTTPRoute", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
            "default": {"filters": [{"type": "RequestHeaderModifier",
                                     "requestHeaderModifier": {"set": [{"name": "x-v", "value": "2"}]}}]}}]}]}},
    "MeshTCPRoute": {"type": "MeshTCPRoute", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "web"}]}}]}]}},
    "MeshTrafficPermission": {"type": "MeshTrafficPermission", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "rules": [{"default": {"allow": [{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}]}}]}},
    "MeshLoadBalancingStrategy": {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "default": {"loadBalancer": {"type": "RingHash"},
                            "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]}}]}},
    "MeshRetry": {"type": "MeshRetry", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"http": {"numRetries": 2}}}]}},
    "MeshCircuitBreaker": {"type": "MeshCircuitBreaker", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "default": {"connectionLimits": {"maxConnections": 8}}}]}},
    "MeshHealthCheck": {"type": "MeshHealthCheck", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "default": {"interval": "10s", "http": {"path": "/health"}, "tcp": {}}}]}},
    "MeshAccessLog": {"type": "MeshAccessLog", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "default": {"backends": [{"type": "File", "file": {"path": "/dev/stdout"}}]}}]}},
    "MeshFaultInjection": {"type": "MeshFaultInjection", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [{"abort": {"httpStatus": 503,
                                                                               "percentage": 30}}]}}]}},
    "MeshRateLimit": {"type": "MeshRateLimit", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "rules": [{"default": {"local": {"http": {"requestRate": {"num": 10, "interval": "1s"}}}}}]}},
    "MeshTrace": {"type": "MeshTrace", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}]}}},
    "MeshProxyPatch": {"type": "MeshProxyPatch", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "default": {"appendModifications": [{"cluster": {"operation": "Patch", "match": {"origin": "inbound"},
                                                         "value": "connectTimeout: 7s"}}]}}},
    "MeshTimeout": {"type": "MeshTimeout", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"http": {"requestTimeout": "3s"}}}]}},
    "MeshTLS": {"type": "MeshTLS", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "rules": [{"default": {"mode": "Permissive"}}]}},
    "MeshMetric": {"type": "MeshMetric", "mesh": "default", "name": "sample", "spec": {
        "targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
        "default": {"backends": [{"type": "Prometheus", "prometheus": {"port": 5670}}]}}},
}


# Kinds that change only transparent proxies: their test makes backend-1 one.
TPROXY_KINDS = ("MeshPassthrough",)


def test_every_registered_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(POLICY_KINDS)


@pytest.fixture
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryStore]]:
    store = await MemoryStore.open()
    async with TestClient(TestServer(Api(Resources(store), admin_token="t").app())) as c:
        for path, doc in (("/meshes/default", MESH), ("/meshes/default/dataplanes/backend-1",
                                                       dp("backend-1", "backend", 8080)),
                          ("/meshes/default/dataplanes/web-1", dp("web-1", "web", 8081))):
            assert (await c.put(path, json=doc)).status == 201
        yield c, store
    await store.close()


@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.kind for p in PLUGINS])
async def test_registered_kind_is_served_listed_watched_and_changes_config(api, plugin) -> None:
    client, store = api
    assert plugin.kind in CONFIG_KINDS
    for name in (plugin.kind, plugin.kind.lower(), plugin.plural, *plugin.aliases):
        assert kind_of(name).name == plugin.kind
    if plugin.kind in TPROXY_KINDS:  # only a transparent proxy has something for it to change
        tproxy = dp("backend-1", "backend", 8080)
        tproxy["networking"] = {**tproxy["networking"], "outbound": [],
                                "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}
        assert (await client.put("/meshes/default/dataplanes/backend-1", json=tproxy)).status == 200
    sync = XdsSync(store, cache=None)
    before = await sync._rebuild("default")
    assert before is not None
    old = proxy_snapshot(before, before.by_name["backend-1"])
    sample = SAMPLES[plugin.kind]
    r = await client.put(f"/meshes/default/{plugin.plural}/{sample['name']}", json=sample)
    assert r.status == 201, await r.text()
    listed = await (await client.get(f"/meshes/default/{plugin.plural}")).json()
    initial = [p["name"] for p in plugin.initial_policies("default")]  # made with the mesh
    assert sorted(i["name"] for i in listed["items"]) == sorted([*initial, sample["name"]])
    bad = await client.put(f"/meshes/default/{plugin.plural}/bad", json={**sample, "name": "bad", "spec": 3})
    assert bad.status == 400 and (await bad.json())["causes"][0]["field"] == "spec"
    after = await sync._rebuild("default")
    assert after is not None
    new = proxy_snapshot(after, after.by_name["backend-1"])
    assert new.versions != old.versions, f"{plugin.kind} did not change the generated config"
    untouched = proxy_snapshot(after, after.by_name["web-1"])
    assert untouched.versions == proxy_snapshot(before, before.by_name["web-1"]).versions


async def test_every_registered_kind_together_reaches_an_envoy_that_loads_it(api, tmp_path: Path) -> None:
    """The config a proxy gets with one sample of every registered kind in force is accepted by the real Envoy
    (`--mode validate`), so a kind's output does not just change versions but is config Envoy takes."""
    client, store = api
    for plugin in PLUGINS:
        sample = SAMPLES[plugin.kind]
        r = await client.put(f"/meshes/default/{plugin.plural}/{sample['name']}", json=sample)
        assert r.status == 201, await r.text()
    state = await XdsSync(store, cache=None)._rebuild("default")
    assert state is not None
    proxy = build_proxy(state.ctx, state.by_name["backend-1"])
    # MeshExternalService is a resource, not a policy: it selects no proxy, every proxy gets its cluster
    assert {kind for kind, m in proxy.matched.items() if "sample" in m.policies} == set(POLICY_KINDS) - {
        "MeshExternalService"}
    messages = generate(state.ctx, proxy.dp, proxy).messages()
    assert any(name == f"extsvc/{SAMPLES['MeshExternalService']['name']}" for by in messages.values() for name in by)
    envoy_accepts(messages, tmp_path, "spiffe://default/backend")


def test_duplicate_order_or_name_fails_at_import() -> None:
    mtp = POLICY_KINDS["MeshTrafficPermission"]
    twin = type("Twin", (type(mtp),), {"kind": "Twin", "plural": "twins", "aliases": ()})()
    with pytest.raises(RuntimeError, match="share order"):
        check([mtp, twin])
    alias = type("Alias", (type(mtp),), {"kind": "Other", "plural": "others", "order": 1, "aliases": ("mtp",)})()
    with pytest.raises(RuntimeError, match="both claim the name 'mtp'"):
        check([mtp, alias])


NEW_KIND = textwrap.dedent('''
    """A kind that exists only in this process: one registry entry must make it served, watched and applied."""
    import asyncio

    from envoy.config.cluster.v3 import cluster_pb2

    from dpagent.controlplane.policies import registry
    from dpagent.controlplane.policies.base import PolicyPlugin, Rules
    from dpagent.controlplane.policies.envelope import DEFAULT, Shape

    class MarkerRules(Rules):
        pass

    class Marker(PolicyPlugin):
        kind, plural, aliases, order = "MeshTestMarker", "meshtestmarkers", ("mtm",), 9998
        shape = Shape(sections=(DEFAULT,))

        def validate_conf(self, v, conf, path, section):
            v.unknown(conf, ("value",), path)
            v.name(conf.get("value"), path + ".value")

        def rules(self, ctx, dp, matched):
            return Rules(warnings=tuple(f"marker={matched.default.get('value')}" for _ in matched.policies))

        def apply(self, rs, ctx, dp, rules):
            from dpagent.controlplane.xds.resources import Origin
            from dpagent.controlplane.xds.snapshot import CLUSTER
            for w in rules.warnings:
                name = w.replace("=", "-")
                rs.add(CLUSTER, name, cluster_pb2.Cluster(name=name), Origin.OUTBOUND)

    registry.PLUGINS = registry.check((*registry.PLUGINS, Marker()))
    registry.POLICY_KINDS = {p.kind: p for p in registry.PLUGINS}

    from aiohttp.test_utils import TestClient, TestServer
    from dpagent.controlplane.api import Api
    from dpagent.controlplane.kinds import kind_of
    from dpagent.controlplane.resources import Resources
    from dpagent.controlplane.store import MemoryStore
    from dpagent.controlplane.xds.snapshot import CLUSTER
    from dpagent.controlplane.xds.sync import CONFIG_KINDS, XdsSync, proxy_snapshot

    async def main():
        store = await MemoryStore.open()
        async with TestClient(TestServer(Api(Resources(store), admin_token="t").app())) as c:
            await c.put("/meshes/default", json={"type": "Mesh", "name": "default"})
            await c.put("/meshes/default/dataplanes/a", json={"type": "Dataplane", "mesh": "default", "name": "a",
                        "networking": {"address": "10.0.0.1", "inbound": [{"port": 1,
                                                                            "tags": {"kuma.io/service": "a"}}]}})
            r = await c.put("/meshes/default/meshtestmarkers/m", json={"type": "MeshTestMarker", "mesh": "default",
                            "name": "m", "spec": {"default": {"value": "x"}}})
            assert r.status == 201, await r.text()
            bad = await c.put("/meshes/default/meshtestmarkers/n", json={"type": "MeshTestMarker",
                              "mesh": "default", "name": "n", "spec": {"default": {"value": "X!"}}})
            assert bad.status == 400, await bad.text()
            listed = await (await c.get("/meshes/default/meshtestmarkers")).json()
            assert [i["name"] for i in listed["items"]] == ["m"], listed
        assert kind_of("mtm").name == "MeshTestMarker" and "MeshTestMarker" in CONFIG_KINDS
        state = await XdsSync(store, cache=None)._rebuild("default")
        assert "marker-x" in proxy_snapshot(state, state.by_name["a"]).resources(CLUSTER)
        print("served, listed, watched and applied")

    asyncio.run(main())
''')


def test_one_registry_line_makes_a_new_kind_served_watched_and_applied() -> None:
    """Run in a fresh interpreter: the registry is patched before anything derives from it."""
    out = subprocess.run([sys.executable, "-c", NEW_KIND], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "served, listed, watched and applied" in out.stdout
