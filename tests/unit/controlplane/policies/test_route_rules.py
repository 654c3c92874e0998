"""The route plugins from stored documents to rules: matching, per-destination rules lowest priority first, the
MeshHTTPRoute-over-MeshTCPRoute precedence, and every unresolvable ref surfaced as an `inspect` warning."""

from __future__ import annotations

from typing import Any

from unit.controlplane.policies.route_plugin_testlib import CLIENT, MESH, SERVERS, TPROXY_CLIENT

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshhttproute.plugin import HttpRouteRules
from dpagent.controlplane.policies.meshtcproute.plugin import TcpRouteRules
from dpagent.controlplane.xds.context import MeshContext, build_proxy


def http_route(name: str, *rules: dict[str, Any], to: dict[str, Any] | None = None,
               top: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "MeshHTTPRoute", "mesh": "default", "name": name, "spec": {
        **({"targetRef": top} if top else {}),
        "to": [{"targetRef": to or {"kind": "MeshService", "name": "backend"}, "rules": list(rules)}]}}


def tcp_route(name: str, service: str, *refs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTCPRoute", "mesh": "default", "name": name, "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": service}, "rules": [{"default": {"backendRefs": list(refs)}}]}]}}


def to_backends(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": list(refs)}}


def ctx(*policies: dict[str, Any]) -> MeshContext:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for p in policies:
        by_kind.setdefault(p["type"], []).append(p)
    return MeshContext(MESH, [*SERVERS, CLIENT, TPROXY_CLIENT], by_kind)


def test_rules_per_destination_lowest_priority_first_and_only_for_selected_proxies() -> None:
    v2 = {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}
    c = ctx(http_route("b-wide", to_backends({"kind": "MeshService", "name": "backend"})),
            http_route("a-web", to_backends(v2), top={"kind": "MeshService", "name": "web"}))
    rules = build_proxy(c, CLIENT).rules["MeshHTTPRoute"]
    assert isinstance(rules, HttpRouteRules)
    dest = rules.by_service["backend"]
    # MeshService (web) is more specific than Mesh: it comes last, so it wins the merge
    assert dest.items == (("b-wide", 0), ("a-web", 0))
    assert rules.outbound_conf("backend")["rules"][0]["default"]["backendRefs"][0]["tags"] == {"version": "v2"}
    server = build_proxy(c, SERVERS[0]).rules["MeshHTTPRoute"]
    assert isinstance(server, HttpRouteRules) and server.by_service["backend"].items == (("b-wide", 0),)


def test_unresolvable_refs_are_inspect_warnings() -> None:
    c = ctx(http_route("r", to_backends(
        {"kind": "MeshExternalService", "name": "httpbin"},
        {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v9"}},
        {"kind": "MeshService", "name": "ghost"},
        {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}})),
        http_route("s", to_backends({"kind": "MeshService", "name": "backend"}),
                   to={"kind": "MeshService", "name": "backend", "sectionName": "http"}),
        tcp_route("t", "db", {"kind": "MeshService", "name": "db", "port": 5432}))
    proxy = build_proxy(c, CLIENT)
    warnings = {k.kind: k.warnings for k in kind_policies(proxy)}
    http = warnings["MeshHTTPRoute"]
    assert len(http) == 4, http
    assert "MeshHTTPRoute r to[0].rules[0].default.backendRefs[0]: MeshExternalService(httpbin) cannot be resolved" \
        in http[0]
    assert "backendRefs[1]: MeshServiceSubset(backend){version=v9}: no ready dataplane" in http[1]
    assert "backendRefs[2]: MeshService(ghost): no dataplane in the mesh serves service 'ghost'" in http[2]
    assert http[3].startswith("MeshHTTPRoute s to[0].targetRef: MeshService(backend)/http cannot be resolved")
    assert warnings["MeshTCPRoute"] == ["MeshTCPRoute t to[0].rules[0].default.backendRefs[0]: "
                                        "MeshService(db):5432 cannot be resolved: this control plane routes only to "
                                        "kuma.io/service names (MeshService by name without port/sectionName/labels, "
                                        "or MeshServiceSubset); the backend is dropped"]
    assert set(proxy.warnings) >= set(http)


def test_http_route_takes_precedence_over_tcp_route_on_an_http_destination() -> None:
    subset = {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}
    only_tcp = build_proxy(ctx(tcp_route("t", "backend", subset)), CLIENT).rules["MeshTCPRoute"]
    both = build_proxy(ctx(tcp_route("t", "backend", subset), http_route("h", to_backends(subset))),
                       CLIENT).rules["MeshTCPRoute"]
    assert isinstance(only_tcp, TcpRouteRules) and isinstance(both, TcpRouteRules)
    assert only_tcp.http_routed == frozenset() and both.http_routed == frozenset({"backend"})


def test_proxies_selected_by_the_same_policies_share_one_sorted_match() -> None:
    """Sorting a mesh-wide route set per proxy was most of generation; the context's match cache sorts it once,
    and a proxy selected by a different set still gets its own."""
    c = ctx(http_route("wide", to_backends({"kind": "MeshService", "name": "backend"})),
            http_route("web-only", to_backends({"kind": "MeshService", "name": "backend"}),
                       top={"kind": "MeshService", "name": "web"}))
    a, b, server = (build_proxy(c, dp).matched["MeshHTTPRoute"] for dp in (CLIENT, TPROXY_CLIENT, SERVERS[0]))
    assert a.to is b.to and [i.policy for i in a.to] == ["wide", "web-only"]
    assert [i.policy for i in server.to] == ["wide"]
