"""MeshCircuitBreaker's xDS step: already-matched confs in, cluster fields out (one golden per case, each loaded by
the real Envoy); outbound clusters stay shared between proxies with the same effective conf; `inspect` shows the
merged conf per outbound and inbound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, generate_with
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.matching import Item, Matched
from dpagent.controlplane.policies.meshcircuitbreaker.api import KIND, default_policy
from dpagent.controlplane.policies.meshcircuitbreaker.plugin import McbRules
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import Origin
from dpagent.controlplane.xds.snapshot import CLUSTER

TESTDATA = Path(__file__).parent / "testdata"
INBOUND = "10.0.2.2:8080"
ALL_DETECTORS = {
    "connectionLimits": {"maxConnections": 2, "maxConnectionPools": 3, "maxPendingRequests": 8, "maxRequests": 2,
                         "maxRetries": 1},
    "outlierDetection": {"interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 20,
                         "splitExternalAndLocalErrors": True, "healthyPanicThreshold": "12.5", "detectors": {
                             "totalFailures": {"consecutive": 10}, "gatewayFailures": {"consecutive": 4},
                             "localOriginFailures": {"consecutive": 6},
                             "successRate": {"minimumHosts": 5, "requestVolume": 10, "standardDeviationFactor": "1.9"},
                             "failurePercentage": {"requestVolume": 10, "minimumHosts": 5, "threshold": 85}}}}
ONE_DETECTOR = {"outlierDetection": {"detectors": {"gatewayFailures": {"consecutive": 3}}}}


def to(service: str | None, *confs: dict[str, Any]) -> tuple[Item, ...]:
    ref = TargetRef("MeshService", service) if service else TargetRef("Mesh")
    return tuple(Item(f"p{i}", i, 0, c, ref) for i, c in enumerate(confs))


def rules(items: tuple[Item, ...] = (), inbounds: dict[str, dict[str, Any]] | None = None) -> McbRules:
    return McbRules(matched=Matched(KIND, to=items) if items else None, inbounds=inbounds or {})


DEFAULT_CONF = default_policy("default")["spec"]["to"][0]["default"]
CASES: dict[str, McbRules] = {
    "default_limits_everywhere": rules(to(None, DEFAULT_CONF)),
    "all_detectors_backend": rules(to("backend", ALL_DETECTORS)),
    "one_detector_others_off": rules(to("backend", ONE_DETECTOR)),
    "disabled_outlier_keeps_limits": rules(to("db", {"connectionLimits": {"maxConnections": 5},
                                                     "outlierDetection": {"disabled": True, "detectors": {
                                                         "totalFailures": {"consecutive": 1}}}})),
    "inbound_rules": rules(inbounds={INBOUND: {"connectionLimits": {"maxPendingRequests": 1}}}),
}


def _clusters(r: McbRules) -> dict[str, Any]:
    return generate_with({KIND: r}).messages()[CLUSTER]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    clusters = _clusters(CASES[case])
    mine = {n: c for n, c in clusters.items() if c.HasField("circuit_breakers") or c.HasField("outlier_detection")}
    assert mine, "the conf changed no cluster"
    assert_golden(resources_to_plain({CLUSTER: mine}), f"xds_{case}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(generate_with({KIND: CASES[case]}).messages(), tmp_path, "spiffe://default/web")


def test_unconfigured_detectors_are_not_enforced() -> None:
    od = _clusters(CASES["one_detector_others_off"])["backend"].outlier_detection
    assert od.consecutive_gateway_failure.value == 3 and od.enforcing_consecutive_gateway_failure.value == 100
    # Envoy enforces consecutive 5xx at 100 % unless told otherwise: it must be written as 0
    assert od.HasField("enforcing_consecutive_5xx") and od.enforcing_consecutive_5xx.value == 0
    assert od.enforcing_success_rate.value == 0 and od.enforcing_failure_percentage.value == 0


def test_outbound_cluster_stays_shared_per_conf() -> None:
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips)
    same = rules(to("backend", ONE_DETECTOR))
    a = generate_with({KIND: same}, ctx=ctx).get(CLUSTER, "backend")
    b = generate_with({KIND: rules(to("backend", dict(ONE_DETECTOR)))}, ctx=ctx).get(CLUSTER, "backend")
    other = generate_with({KIND: rules(to("backend", ALL_DETECTORS))}, ctx=ctx).get(CLUSTER, "backend")
    untouched = generate_with({KIND: same}, ctx=ctx).get(CLUSTER, "db")
    assert a is not None and b is not None and other is not None and untouched is not None
    assert a.shared is not None and a.shared is b.shared  # one serialised cluster for every proxy with this conf
    assert other.shared is not None and other.shared is not a.shared
    assert untouched.shared is ctx.shared_resources[CLUSTER]["db"]


def test_inbound_conf_lands_on_the_local_cluster_only() -> None:
    rs = generate_with({KIND: CASES["inbound_rules"]})
    touched = {e.name: e.origin for e in rs.entries(CLUSTER) if e.message.HasField("circuit_breakers")}  # type: ignore[attr-defined]
    assert set(touched.values()) == {Origin.INBOUND} and len(touched) == 1


def test_inspect_shows_merged_conf_per_outbound_and_inbound() -> None:
    low = yaml.safe_load("""
type: MeshCircuitBreaker
mesh: default
name: zz-mesh-wide
spec:
  to:
    - targetRef: {kind: Mesh}
      default: {connectionLimits: {maxConnections: 10, maxRequests: 10}}
""")
    high = {"type": KIND, "mesh": "default", "name": "backend-only", "spec": {
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"connectionLimits": {"maxRequests": 3}}}]}}
    inbound = {"type": KIND, "mesh": "default", "name": "web-in", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionLimits": {"maxPendingRequests": 4}}}]}}
    plugin = POLICY_KINDS[KIND]
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips,
                      policies={KIND: [plugin.parse(d) for d in (low, high, inbound)]})
    proxy = build_proxy(ctx, CLIENT)
    view = next(k for k in kind_policies(proxy) if k.kind == KIND)
    confs = {o.service: o.conf for o in view.outbounds}  # type: ignore[attr-defined]
    assert confs["backend"] == {"connectionLimits": {"maxConnections": 10, "maxRequests": 3}}
    assert confs["db"] == {"connectionLimits": {"maxConnections": 10, "maxRequests": 10}}
    assert {i.inbound: i.conf for i in view.inbounds if i.conf} == {  # type: ignore[attr-defined]
        INBOUND: {"connectionLimits": {"maxPendingRequests": 4}}}
    cluster = generate(ctx, CLIENT, proxy).get(CLUSTER, "backend")
    assert cluster is not None
    assert cluster.message.circuit_breakers.thresholds[0].max_requests.value == 3  # type: ignore[attr-defined]
