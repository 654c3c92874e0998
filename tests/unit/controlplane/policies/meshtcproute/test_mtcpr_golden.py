"""MeshTCPRoute → Envoy: golden tcp_proxy filters (single cluster, weighted clusters, subsets) with the clusters and
endpoints they need, each loaded by the real Envoy (`--mode validate`) on an outbound listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from route_testlib import bootstrap, matched, static_clusters, to_plain
from unit.controlplane.xds._xds_testlib import assert_golden_file, envoy_validate

from dpagent.controlplane.policies.meshroute.backends import backend_resources
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.controlplane.policies.meshtcproute.api import parse_meshtcproute, to_rules
from dpagent.controlplane.policies.meshtcproute.tcp import (
    backends,
    destination_rules,
    effective_rule,
    outbound_tcp_proxy,
    tcp_proxy,
    uses_tcp_route,
)
from dpagent.model.dataplane import parse_dataplane

TESTDATA = Path(__file__).parent / "testdata"


def dp(name: str, address: str, service: str, **tags: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {"address": address, "inbound": [
        {"port": 5432, "tags": {"kuma.io/service": service, "kuma.io/protocol": "tcp", **tags}}]}}


DATAPLANES = [parse_dataplane(d) for d in (dp("db-1", "10.0.1.1", "db", role="primary"),
                                           dp("db-2", "10.0.1.2", "db", role="replica"),
                                           dp("db-replica-1", "10.0.1.3", "db-replica"))]


def route(name: str, *backend_lists: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "MeshTCPRoute", "name": name, "mesh": "default", "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": "db"},
         "rules": [{"default": {"backendRefs": refs}} for refs in backend_lists]}]}}


SPLIT = [{"kind": "MeshService", "name": "db", "weight": 80},
         {"kind": "MeshService", "name": "db-replica", "weight": 20}]
# case → policies, lowest priority first
CASES: dict[str, list[dict[str, Any]]] = {
    "split": [route("db-split", SPLIT)],
    "single_backend": [route("one", [{"kind": "MeshService", "name": "db-replica"}])],
    "no_rules_is_the_destination": [{"type": "MeshTCPRoute", "name": "empty", "mesh": "default", "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": "db"}, "rules": []}]}}],
    "subsets_and_dropped": [route("subsets", [
        {"kind": "MeshServiceSubset", "name": "db", "tags": {"role": "primary"}, "weight": 3},
        {"kind": "MeshServiceSubset", "name": "db", "tags": {"role": "replica"}, "weight": 1},
        {"kind": "MeshService", "name": "db", "weight": 0},
        {"kind": "MeshExternalService", "name": "pg-cloud", "weight": 5}])],
    "highest_priority_first_rule_wins": [
        route("zz-low", SPLIT),
        route("aa-high", [{"kind": "MeshService", "name": "db-replica"}], [{"kind": "MeshService", "name": "db"}]),
        {"type": "MeshTCPRoute", "name": "elsewhere", "mesh": "default", "spec": {"to": [
            {"targetRef": {"kind": "MeshService", "name": "cache"},
             "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "cache"}]}}]}]}}],
}


def build(case: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    policies = [parse_meshtcproute(p) for p in CASES[case]]
    flt, used = outbound_tcp_proxy("outbound_db", destination_rules(matched("MeshTCPRoute", policies), "db"), "db")
    assert flt is not None
    clusters, assignments = backend_resources([BackendRef(kind="MeshService", name="db"), *used], DATAPLANES,
                                              mesh="default", mtls=False, protocols={"db": "tcp", "db-replica": "tcp"})
    return flt, clusters, assignments


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    flt, clusters, assignments = build(case)
    assert_golden_file({"filter": to_plain(flt), "clusters": {n: to_plain(c) for n, c in clusters.items()},
                   "endpoints": {n: to_plain(a) for n, a in assignments.items()}}, TESTDATA / f"{case}.golden.yaml")


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Path) -> None:
    flt, clusters, assignments = build(case)
    envoy_validate(bootstrap([flt], static_clusters(clusters, assignments)), tmp_path)


def test_nothing_usable_means_no_tcp_proxy() -> None:
    rule = effective_rule([to_rules(parse_meshtcproute(route("zero", [
        {"kind": "MeshService", "name": "db", "weight": 0},
        {"kind": "MeshService", "name": "db", "port": 5432}])).to[0].conf)])  # a real MeshService: unresolved
    assert backends(rule, "db") == []
    with pytest.raises(ValueError, match="at least one backend"):
        tcp_proxy("outbound_db", [])
    assert outbound_tcp_proxy("outbound_db", [(rule,)] if rule else [], "db")[0] is None


def test_http_route_takes_priority_over_tcp_route() -> None:
    assert uses_tcp_route("http", has_http_route=False, has_tcp_route=True)
    assert not uses_tcp_route("grpc", has_http_route=True, has_tcp_route=True)
    assert not uses_tcp_route("http2", has_http_route=False, has_tcp_route=False)  # default HCM stays
    assert uses_tcp_route("tcp", has_http_route=True, has_tcp_route=False)  # L4 destinations always tcp_proxy
