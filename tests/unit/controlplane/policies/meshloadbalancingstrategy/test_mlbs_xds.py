"""MeshLoadBalancingStrategy's xDS step on its own: already-matched `to[]` items in, the outbound clusters'
balancer, the routes' hash policies and the endpoints' zone priorities out; one golden per case, each loaded by
the real Envoy, plus the sharing and MeshHTTPRoute-composition properties the golden files cannot show."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, MESH, SERVERS, generate_with
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.meshhttproute.api import KIND as MHR
from dpagent.controlplane.policies.meshhttproute.api import to_rules as http_rules
from dpagent.controlplane.policies.meshhttproute.plugin import Destination, HttpRouteRules
from dpagent.controlplane.policies.meshloadbalancingstrategy.api import KIND
from dpagent.controlplane.policies.meshloadbalancingstrategy.plugin import LbRules
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, ROUTE
from dpagent.model.dataplane import parse_dataplane

TESTDATA = Path(__file__).parent / "testdata"
BACKEND = TargetRef(kind="MeshService", name="backend")
MESH_REF = TargetRef(kind="Mesh")


_NAMES = itertools.count()


def rules(*confs: tuple[TargetRef, dict[str, Any]], zone: str = "") -> LbRules:
    """Items as matching would hand them over; each policy gets a fresh name, as policy names are what the
    context's memo keys hold (unique within one mesh)."""
    return LbRules(items=tuple(Item(f"p{next(_NAMES)}", i, 0, conf, ref) for i, (ref, conf) in enumerate(confs)),
                   zone=zone)


RING = {"loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "MurmurHash2", "minRingSize": 2048,
                                                          "maxRingSize": 4096}},
        "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}, "terminal": True},
                         {"type": "Cookie", "cookie": {"name": "s", "ttl": "1h", "path": "/"}},
                         {"type": "Connection", "connection": {"sourceIP": True}},
                         {"type": "QueryParameter", "queryParameter": {"name": "u"}},
                         {"type": "FilterState", "filterState": {"key": "k"}}]}
LEAST = {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 4, "activeRequestBias": "1.5"}}}
MAGLEV = {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 5,
                                                        "hashPolicies": [{"type": "Header", "header": {"name": "a"}}]}}}

# Backends in two zones and a client in zone-1: its endpoints of backend are split into priorities.
ZONED = [parse_dataplane({"type": "Dataplane", "mesh": "default", "name": n, "networking": {"address": a, "inbound": [
    {"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http",
                                                 "kuma.io/zone": z}}]}})
         for n, a, z in (("b1", "10.0.0.2", "zone-1"), ("b2", "10.0.0.3", "zone-2"), ("b3", "10.0.0.4", "zone-2"))]
ZONED_CLIENT = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
    "address": "10.0.2.2",
    "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http",
                                                             "kuma.io/zone": "zone-1"}}],
    "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}})
ZONED_CONTEXT = MeshContext(MESH, [*ZONED, ZONED_CLIENT])

CASES: dict[str, tuple[LbRules, MeshContext]] = {
    "ringhash_backend": (rules((BACKEND, RING)), CONTEXT),
    "leastrequest_mesh": (rules((MESH_REF, LEAST)), CONTEXT),
    # Mesh-wide Maglev, then a more specific RoundRobin for db: merged per destination.
    "maglev_mesh_roundrobin_db": (rules((MESH_REF, MAGLEV), (TargetRef(kind="MeshService", name="db"),
                                                             {"loadBalancer": {"type": "RoundRobin"}})), CONTEXT),
    "zone_priorities": (rules((BACKEND, {"loadBalancer": {"type": "Random"}}), zone="zone-1"), ZONED_CONTEXT),
    "zone_threshold": (rules((BACKEND, {"localityAwareness": {"crossZone": {
        "failover": [{"to": {"type": "Any"}}], "failoverThreshold": {"percentage": 30}}}}), zone="zone-1"),
        ZONED_CONTEXT),
}


def _apply(r: LbRules, ctx: MeshContext) -> ResourceSet:
    return generate_with({KIND: r}, ZONED_CLIENT if ctx is ZONED_CONTEXT else CLIENT, ctx)


def _outbound(rs: ResourceSet) -> dict[str, Any]:
    msgs = rs.messages()
    return resources_to_plain({t: {n: m for n, m in msgs[t].items() if n.startswith(("backend", "db",
                                                                                      "outbound:backend",
                                                                                      "outbound:db"))}
                               for t in (CLUSTER, ENDPOINT, ROUTE)})


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    assert_golden(_outbound(_apply(*CASES[case])), f"xds_{case}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(_apply(*CASES[case]).messages(), tmp_path, "spiffe://default/web")


def test_no_policy_leaves_the_shared_resources_untouched() -> None:
    rs = generate_with({}, CLIENT, CONTEXT)
    for t, name in ((CLUSTER, "backend"), (ROUTE, names.outbound_route("backend"))):
        entry = rs.get(t, name)
        assert entry is not None and entry.shared is CONTEXT.shared_resources[t][name]


def test_same_effective_conf_shares_one_serialised_resource() -> None:
    """Two proxies whose different policies merge to one conf get the very same bytes; a different conf does not."""
    ctx = MeshContext(MESH, CONTEXT.dataplanes, vips=CONTEXT.vips)
    one = generate_with({KIND: rules((BACKEND, RING))}, CLIENT, ctx)
    two = generate_with({KIND: rules((MESH_REF, {"loadBalancer": {"type": "Random"}}), (BACKEND, RING))}, CLIENT, ctx)
    other = generate_with({KIND: rules((BACKEND, LEAST))}, CLIENT, ctx)
    for t, name in ((CLUSTER, "backend"), (ROUTE, names.outbound_route("backend"))):
        a, b = one.get(t, name), two.get(t, name)
        assert a is not None and b is not None and a.shared is not None
        assert a.shared is b.shared
    assert other.get(CLUSTER, "backend").shared is not one.get(CLUSTER, "backend").shared  # type: ignore[union-attr]
    db = one.get(CLUSTER, "db")
    assert db is not None and db.shared is ctx.shared_resources[CLUSTER]["db"]  # not targeted: untouched


def test_hash_policies_land_on_the_route_a_meshhttproute_swapped_in() -> None:
    """The plugin runs after MeshHTTPRoute (400 > 100): every route of the route policy's config gets the list."""
    route = http_rules({"rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
         "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}}]}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}],
         "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}}]})
    http = HttpRouteRules(by_service={"backend": Destination((route,), (("r", 0),))})
    rs = generate_with({MHR: http, KIND: rules((BACKEND, RING))}, CLIENT, CONTEXT)
    rc = rs.messages()[ROUTE][names.outbound_route("backend")]
    forwarding = [r for vh in rc.virtual_hosts for r in vh.routes if r.HasField("route")]
    assert len(forwarding) >= 3  # /a, /b and the default route
    assert all([h.header.header_name for h in r.route.hash_policy][:1] == ["x-user"] for r in forwarding)
    assert all(len(r.route.hash_policy) == 5 for r in forwarding)
    # the subset clusters the route added are balanced the same way
    subset = [c for n, c in rs.messages()[CLUSTER].items() if n.startswith("backend-")]
    assert subset and all(c.lb_policy == c.RING_HASH for c in subset)


def test_client_without_a_zone_or_with_a_zone_lacking_endpoints_keeps_one_priority() -> None:
    for zone in ("", "zone-9"):
        rs = generate_with({KIND: rules((BACKEND, {"loadBalancer": {"type": "Random"}}), zone=zone)}, ZONED_CLIENT,
                           ZONED_CONTEXT)
        cla = rs.messages()[ENDPOINT]["backend"]
        assert {loc.priority for loc in cla.endpoints} == {0}


def test_disabled_locality_keeps_one_priority() -> None:
    rs = generate_with({KIND: rules((BACKEND, {"localityAwareness": {"disabled": True}}), zone="zone-1")},
                       ZONED_CLIENT, ZONED_CONTEXT)
    assert {loc.priority for loc in rs.messages()[ENDPOINT]["backend"].endpoints} == {0}


assert SERVERS  # the shared test mesh (backend v1/v2, db primary/replica)
