"""MeshProxyPatch: Kuma's YAML accepted, bad specs refused at exact paths, RFC 6902 patches, and each modification
kind applied to a real generated ResourceSet; the result is loaded by the real Envoy, and shared resources of other
proxies stay untouched."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from unit.controlplane.xds._xds_testlib import envoy_accepts

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshproxypatch import MeshProxyPatchPlugin
from dpagent.controlplane.policies.meshproxypatch.jsonpatch import PatchError, apply
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

PLUGIN = MeshProxyPatchPlugin()
P = "spec.default.appendModifications"

DOCS = ["""
type: MeshProxyPatch
name: backend-stream-idle-timeout
mesh: default
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: backend
  default:
    appendModifications:
      - networkFilter:
          operation: Patch
          match:
            name: envoy.filters.network.http_connection_manager
            origin: inbound
          jsonPatches:
            - op: replace
              path: "/streamIdleTimeout"
              value: 15s
""", """
type: MeshProxyPatch
name: custom-template-1
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  default:
    appendModifications:
      - cluster:
          operation: Add
          value: |
            name: test-cluster
            connectTimeout: 5s
            type: STATIC
      - cluster:
          operation: Patch
          match:
            name: test-cluster
          value: |
            connectTimeout: 6s
      - listener:
          operation: Remove
          match:
            origin: inbound
            tags:
              kuma.io/service: backend
      - httpFilter:
          operation: AddBefore
          match:
            name: envoy.filters.http.router
            origin: inbound
          value: |
            name: envoy.filters.http.gzip
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressorLibrary:
                name: gzip
                typedConfig:
                  '@type': type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
      - virtualHost:
          operation: Patch
          match:
            routeConfigurationName: outbound:backend
          jsonPatches:
            - op: add
              path: /retryPolicy
              value: {retryOn: 5xx, numRetries: 3}
"""]


@pytest.mark.parametrize("doc", DOCS)
def test_kuma_yaml_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    PLUGIN.parse(parsed)


def mpp(mods: list[Any], name: str = "p", target: Any = None) -> dict[str, Any]:
    return {"type": "MeshProxyPatch", "mesh": "default", "name": name,
            "spec": {"targetRef": target or {"kind": "Mesh"}, "default": {"appendModifications": mods}}}


BAD: list[tuple[str, list[Any], list[tuple[str, str]]]] = [
    ("two kinds in one item", [{"cluster": {"operation": "Remove"}, "listener": {"operation": "Remove"}}],
     [(f"{P}[0]", "must define exactly one of: cluster, listener, networkFilter, httpFilter, virtualHost")]),
    ("no kind", [{}], [(f"{P}[0]", "must define exactly one of: cluster, listener, networkFilter, httpFilter, "
                                  "virtualHost")]),
    ("filter op on a cluster, add without value", [{"cluster": {"operation": "AddFirst"}},
                                                   {"listener": {"operation": "Add", "match": {"name": "x"}}}],
     [(f"{P}[0].cluster.operation", "must be one of: Add, Remove, Patch"),
      (f"{P}[1].listener.match", "must not be defined for operation Add"),
      (f"{P}[1].listener.value", "must be defined for operation Add")]),
    ("remove with value, patch with both", [
        {"cluster": {"operation": "Remove", "value": "name: a"}},
        {"cluster": {"operation": "Patch", "value": "connectTimeout: 1s",
                     "jsonPatches": [{"op": "remove", "path": "/x"}]}}],
     [(f"{P}[0].cluster.value", "must not be defined for operation Remove"),
      (f"{P}[1].cluster", "must define exactly one of: value, jsonPatches")]),
    ("AddBefore needs match.name, value must parse", [
        {"httpFilter": {"operation": "AddBefore", "value": "name: f\nbogus: 1"}}],
     [(f"{P}[0].httpFilter.match.name", "must be defined for operation AddBefore"),
      (f"{P}[0].httpFilter.value", "must be a valid envoy.extensions.filters.network.http_connection_manager.v3."
                                   "HttpFilter: Message type \"envoy.extensions.filters.network."
                                   "http_connection_manager.v3.HttpFilter\" has no field named \"bogus\" at "
                                   "\"HttpFilter\".\n Available Fields(except extensions): \"['name', "
                                   "'typedConfig', 'configDiscovery', 'isOptional', 'disabled']\"")]),
    ("json patch ops", [{"virtualHost": {"operation": "Patch", "match": {"name": "v"}, "jsonPatches": [
        {"op": "merge", "path": "x"}, {"op": "add", "path": "/a"}, {"op": "remove", "path": "/a", "from": "/b"}]}}],
     [(f"{P}[0].virtualHost.jsonPatches[0].op", "must be one of: add, remove, replace, move, copy"),
      (f"{P}[0].virtualHost.jsonPatches[0].path", "must be a JSON pointer starting with /"),
      (f"{P}[0].virtualHost.jsonPatches[1].value", "must be defined for op add"),
      (f"{P}[0].virtualHost.jsonPatches[2].from", "must be defined only for move and copy")]),
    ("virtualHost needs match, unknown match field", [
        {"virtualHost": {"operation": "Remove"}},
        {"cluster": {"operation": "Remove", "match": {"listenerName": "x"}}},
        {"virtualHost": {"operation": "Add", "value": "name: v\ndomains: ['*']"}}],
     [(f"{P}[0].virtualHost.match", "must be defined"),
      (f"{P}[1].cluster.match.listenerName", "unknown field (expected one of: name, origin)"),
      (f"{P}[2].virtualHost.match", "must be defined")]),
]


@pytest.mark.parametrize(("mods", "want"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_every_violation_with_path(mods: list[Any], want: list[tuple[str, str]]) -> None:
    assert PLUGIN.validate(mpp(mods)) == want


def test_json_patch_rfc6902() -> None:
    doc = {"a": {"b": [1, 2, 3]}, "c": "x"}
    out = apply(doc, [{"op": "add", "path": "/a/b/-", "value": 4}, {"op": "add", "path": "/a/b/0", "value": 0},
                      {"op": "replace", "path": "/c", "value": "y"}, {"op": "remove", "path": "/a/b/1"},
                      {"op": "copy", "from": "/c", "path": "/d"}, {"op": "move", "from": "/a/b", "path": "/e~1f"}])
    assert out == {"a": {}, "c": "y", "d": "y", "e/f": [0, 2, 3, 4]}
    assert doc == {"a": {"b": [1, 2, 3]}, "c": "x"}  # never mutated
    for bad in ({"op": "replace", "path": "/nope", "value": 1}, {"op": "remove", "path": "/a/b/7"},
                {"op": "add", "path": "/x/y", "value": 1}, {"op": "move", "from": "/a", "path": "/a/z"}):
        with pytest.raises(PatchError):
            apply(doc, [bad])


MESH = parse_mesh({"type": "Mesh", "name": "default",
                   "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})


def dataplane(name: str, address: str, service: str, outbound: list[tuple[int, str]]) -> Any:
    return parse_dataplane({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": address, "inbound": [{"port": 8080, "servicePort": 8081, "tags": {
            "kuma.io/service": service, "kuma.io/protocol": "http"}}],
        "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for p, s in outbound]}})


BACKEND = dataplane("backend-1", "10.0.0.2", "backend", [(9001, "web")])
WEB = dataplane("web-1", "10.0.0.1", "web", [(9002, "backend")])
WEB2 = dataplane("web-2", "10.0.0.3", "web", [(9002, "backend")])
WORLD = [BACKEND, WEB, WEB2]


def generated(policies: list[dict[str, Any]], dp: Any) -> ResourceSet:
    c = MeshContext(MESH, WORLD, {"MeshProxyPatch": policies})
    return generate(c, dp, build_proxy(c, dp))


def hcm_of(listener: Any) -> hcm_pb2.HttpConnectionManager:
    f = next(f for f in listener.filter_chains[0].filters if f.name.endswith("http_connection_manager"))
    out = hcm_pb2.HttpConnectionManager()
    f.typed_config.Unpack(out)
    return out


HEADER_VH = {"virtualHost": {"operation": "Patch", "match": {"origin": "inbound"}, "value": (
    "responseHeadersToAdd:\n- header: {key: x-patched, value: 'yes'}\n")}}
CASES: dict[str, list[Any]] = {
    "cluster_add_patch_remove": [
        {"cluster": {"operation": "Add", "value": "name: extra\nconnectTimeout: 5s\ntype: STATIC\n"}},
        {"cluster": {"operation": "Patch", "match": {"origin": "outbound"},
                     "jsonPatches": [{"op": "replace", "path": "/connectTimeout", "value": "7s"}]}},
        {"cluster": {"operation": "Patch", "match": {"name": "extra"}, "value": "connectTimeout: 3s"}}],
    "listener_patch": [{"listener": {"operation": "Patch", "match": {"origin": "inbound",
                                                                   "tags": {"kuma.io/service": "web"}},
                                     "value": "perConnectionBufferLimitBytes: 65536"}}],
    "network_filter_patch": [{"networkFilter": {
        "operation": "Patch", "match": {"name": "envoy.filters.network.http_connection_manager", "origin": "inbound"},
        "jsonPatches": [{"op": "add", "path": "/streamIdleTimeout", "value": "15s"}]}}],
    "http_filter_add_before_router": [{"httpFilter": {
        "operation": "AddBefore", "match": {"name": "envoy.filters.http.router", "origin": "inbound"},
        "value": "name: envoy.filters.http.lua\ntypedConfig:\n  '@type': type.googleapis.com/envoy.extensions."
                 "filters.http.lua.v3.Lua\n"
                 "  defaultSourceCode: {inlineString: 'function envoy_on_request(h) end'}\n"}}],
    "virtual_host_patch_and_add": [HEADER_VH, {"virtualHost": {
        "operation": "Add", "match": {"origin": "outbound"},
        "value": "name: extra\ndomains: [extra.local]\nroutes:\n"
                 "- match: {prefix: /}\n  directResponse: {status: 204}\n"}}],
}


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    rs = generated([mpp(CASES[case])], WEB)
    envoy_accepts(rs.messages(), tmp_path, "spiffe://default/web")


def test_cluster_add_patch_and_remove() -> None:
    rs = generated([mpp(CASES["cluster_add_patch_remove"])], WEB)
    clusters = rs.messages()[CLUSTER]
    assert clusters["extra"].connect_timeout.seconds == 3
    assert clusters["backend"].connect_timeout.seconds == 7
    inbound = [e for e in rs.entries(CLUSTER) if e.origin == "inbound"]
    assert inbound and all(e.message.connect_timeout.seconds != 7 for e in inbound)
    removed = generated([mpp([{"cluster": {"operation": "Remove", "match": {"name": "backend"}}}])], WEB)
    assert "backend" not in removed.messages()[CLUSTER]


def test_patches_concatenate_in_priority_order() -> None:
    general = mpp([{"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": "connectTimeout: 1s"}}],
                  "general")
    specific = mpp([{"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": "connectTimeout: 9s"}}],
                   "specific", {"kind": "Dataplane", "name": "web-1"})
    assert generated([specific, general], WEB).messages()[CLUSTER]["backend"].connect_timeout.seconds == 9
    assert generated([specific, general], WEB2).messages()[CLUSTER]["backend"].connect_timeout.seconds == 1


def test_network_and_http_filters() -> None:
    listeners = generated([mpp(CASES["network_filter_patch"] + CASES["http_filter_add_before_router"])],
                          WEB).messages()[LISTENER]
    inbound = hcm_of(listeners["inbound:10.0.0.1:8080"])
    assert inbound.stream_idle_timeout.seconds == 15
    assert [f.name for f in inbound.http_filters][-2:] == ["envoy.filters.http.lua", "envoy.filters.http.router"]
    outbound = hcm_of(listeners["outbound:127.0.0.1:9002"])
    assert "envoy.filters.http.lua" not in [f.name for f in outbound.http_filters]
    removed = generated([mpp([{"httpFilter": {"operation": "Remove", "match": {
        "name": "envoy.filters.http.router", "origin": "outbound"}}}])], WEB).messages()[LISTENER]
    assert [f.name for f in hcm_of(removed["outbound:127.0.0.1:9002"]).http_filters] == []


def test_virtual_host_and_listener_tags() -> None:
    rs = generated([mpp(CASES["virtual_host_patch_and_add"] + CASES["listener_patch"])], WEB)
    routes = rs.messages()[ROUTE]
    inbound = [r for e in rs.entries(ROUTE) if e.origin == "inbound" for r in [e.message]]
    assert inbound and all(vh.response_headers_to_add[0].header.key == "x-patched"
                           for r in inbound for vh in r.virtual_hosts)
    assert [vh.name for vh in routes["outbound:backend"].virtual_hosts][-1] == "extra"
    assert rs.messages()[LISTENER]["inbound:10.0.0.1:8080"].per_connection_buffer_limit_bytes.value == 65536
    other = generated([mpp(CASES["listener_patch"])], BACKEND).messages()[LISTENER]  # backend's tags differ
    assert not other["inbound:10.0.0.2:8080"].HasField("per_connection_buffer_limit_bytes")


def test_shared_resources_of_other_proxies_stay_untouched() -> None:
    """web-1 is patched, web-2 is not: web-2 keeps the shared outbound cluster, unchanged."""
    patch = mpp(CASES["cluster_add_patch_remove"], target={"kind": "Dataplane", "name": "web-1"})
    c = MeshContext(MESH, WORLD, {"MeshProxyPatch": [patch]})
    patched = generate(c, WEB, build_proxy(c, WEB))
    plain = generate(c, WEB2, build_proxy(c, WEB2))
    assert patched.messages()[CLUSTER]["backend"].connect_timeout.seconds == 7
    entry = plain.get(CLUSTER, "backend")
    assert entry is not None and entry.shared is not None and entry.message.connect_timeout.seconds != 7
    assert "extra" not in plain.messages()[CLUSTER]


def test_a_patch_that_cannot_apply_is_skipped_and_warned() -> None:
    """A JSON pointer the resource does not have: the other modifications still apply; inspect says which failed."""
    mods = [{"cluster": {"operation": "Patch", "match": {"name": "backend"},
                         "jsonPatches": [{"op": "replace", "path": "/noSuchField", "value": 1}]}},
            {"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": "connectTimeout: 4s"}}]
    c = MeshContext(MESH, WORLD, {"MeshProxyPatch": [mpp(mods)]})
    proxy = build_proxy(c, WEB)
    assert proxy.warnings == []  # known only once the resources exist
    rs = generate(c, WEB, proxy)
    assert rs.messages()[CLUSTER]["backend"].connect_timeout.seconds == 4
    view = next(k for k in kind_policies(proxy) if k.kind == "MeshProxyPatch")
    assert view.warnings == proxy.warnings == [
        "MeshProxyPatch: appendModifications[0] (cluster Patch): /noSuchField: 'noSuchField' does not exist"]


@pytest.mark.envoy
def test_envoy_refuses_a_filter_added_after_the_router(tmp_path: Any) -> None:
    """AddLast is literal (as Kuma's): after the terminal router, which Envoy refuses; AddBefore the router is the
    way to add an HTTP filter. Also proves the Envoy check above can fail."""
    lua = CASES["http_filter_add_before_router"][0]["httpFilter"]
    rs = generated([mpp([{"httpFilter": {**lua, "operation": "AddLast"}}])], WEB)
    with pytest.raises(AssertionError, match="must be the last filter"):
        envoy_accepts(rs.messages(), tmp_path, "spiffe://default/web")


def test_a_mesh_wide_patch_of_a_shared_resource_is_built_once() -> None:
    """web-1 and web-2 get the same patched `backend` cluster object: one build and one serialisation per change."""
    c = MeshContext(MESH, WORLD, {"MeshProxyPatch": [mpp(CASES["cluster_add_patch_remove"])]})
    a, b = (generate(c, dp, build_proxy(c, dp)).get(CLUSTER, "backend") for dp in (WEB, WEB2))
    assert a is not None and b is not None and a.shared is not None and a.shared is b.shared
    assert a.message.connect_timeout.seconds == 7
