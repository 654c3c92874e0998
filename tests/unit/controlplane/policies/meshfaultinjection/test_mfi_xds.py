"""MeshFaultInjection end to end inside the CP: matched policies → faults per inbound (from[] merged, rules[]
concatenated, peer-specific from[] warned about) → fault filters before the router, checked against goldens and by
the real Envoy; TCP inbounds and MeshTrafficPermission's RBAC stay as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policylib import BACKEND_DP, BACKEND_HTTP, BACKEND_TCP, MTLS_MESH
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshfaultinjection import MeshFaultInjectionPlugin, MfiRules
from dpagent.controlplane.policies.meshfaultinjection.xds import FILTER_PREFIX
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import LISTENER

TESTDATA = Path(__file__).parent / "testdata"
MESH, DP, HTTP, TCP = MTLS_MESH, BACKEND_DP, BACKEND_HTTP, BACKEND_TCP
ABORT = {"abort": {"httpStatus": 503, "percentage": 30}}
DELAY = {"delay": {"value": "500ms", "percentage": "50.5"}}
BANDWIDTH = {"responseBandwidth": {"limit": "2Mbps", "percentage": 100}}


def mfi(name: str, section: str, *items: Any, target: Any = None) -> dict[str, Any]:
    body = [{"targetRef": ref, "default": {"http": http}} for ref, http in items] if section == "from" else \
        [{"default": {"http": http}} for _, http in items]
    return {"type": "MeshFaultInjection", "mesh": "default", "name": name, "spec": {
        "targetRef": target or {"kind": "Mesh"}, section: body}}


MESH_REF = {"kind": "Mesh"}
CASES: dict[str, list[dict[str, Any]]] = {
    "from_mesh_abort_delay_bandwidth": [mfi("a", "from", (MESH_REF, [ABORT, DELAY, BANDWIDTH]))],
    # from[] merge: the more specific policy's http list replaces the other's; rules[] all apply after it
    "from_merged_then_rules": [
        mfi("a", "from", (MESH_REF, [DELAY])),
        mfi("b", "from", (MESH_REF, [ABORT]), target={"kind": "MeshService", "name": "backend"}),
        mfi("c", "rules", (None, [BANDWIDTH]))],
}


def ctx(policies: list[dict[str, Any]]) -> MeshContext:
    mtp = {"type": "MeshTrafficPermission", "mesh": "default", "name": "all", "spec": {
        "targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}
    return MeshContext(MESH, [DP], {"MeshFaultInjection": policies, "MeshTrafficPermission": [mtp]})


def proxy(policies: list[dict[str, Any]]) -> Any:
    return build_proxy(ctx(policies), DP)


def resources(policies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    c = ctx(policies)
    return generate(c, DP, build_proxy(c, DP)).messages()


def http_filters(listener: Any) -> list[str]:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    listeners = resources(CASES[case])[LISTENER]
    assert_golden(resources_to_plain({LISTENER: {f"inbound:{HTTP}": listeners[f"inbound:{HTTP}"]}}), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(resources(CASES[case]), tmp_path, "spiffe://default/backend")


def test_order_rbac_then_faults_then_router_and_tcp_untouched() -> None:
    plain = resources([])[LISTENER]
    faulty = resources(CASES["from_merged_then_rules"])[LISTENER]
    names = http_filters(faulty[f"inbound:{HTTP}"])
    assert names == ["dpagent.mtp.deny", "dpagent.mtp.allow", f"{FILTER_PREFIX}0", f"{FILTER_PREFIX}1",
                     "envoy.filters.http.router"]
    assert faulty[f"inbound:{TCP}"] == plain[f"inbound:{TCP}"]


def test_rules_merge_and_peer_specific_from_warns() -> None:
    web = {"kind": "MeshService", "name": "web"}
    r = proxy([*CASES["from_merged_then_rules"], mfi("d", "from", (web, [DELAY]))]).rules["MeshFaultInjection"]
    assert isinstance(r, MfiRules)
    faults = r.inbounds[HTTP].faults
    assert [(f.abort is not None, f.delay is not None, f.response_bandwidth is not None) for f in faults] == \
        [(True, False, False), (False, False, True)]
    assert TCP in r.inbounds  # rules are per inbound; xds skips the TCP one
    assert any("d from[0]: a MeshService peer is not supported" in w for w in r.warnings)


def test_inspect_shows_faults_per_inbound() -> None:
    views = {k.kind: k for k in kind_policies(proxy(CASES["from_mesh_abort_delay_bandwidth"]))}
    ib = next(i for i in views["MeshFaultInjection"].inbounds if i.inbound == HTTP)
    assert ib.conf.http[0].abort.http_status == 503 and ib.conf.policies == ["a"]


def test_registered() -> None:
    assert MeshFaultInjectionPlugin.order == 800
