"""MeshHealthCheck's xDS step: already-matched confs in, one health check per destination cluster out (one golden
per case, each loaded by the real Envoy); the checker follows the destination's protocol; clusters stay shared
per conf; MeshCircuitBreaker (later in order) has the last word on the panic threshold; `inspect` shows the conf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, generate_with
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.matching import Item, Matched
from dpagent.controlplane.policies.meshcircuitbreaker.plugin import McbRules
from dpagent.controlplane.policies.meshhealthcheck.api import KIND
from dpagent.controlplane.policies.meshhealthcheck.plugin import MhcRules
from dpagent.controlplane.policies.meshhealthcheck.xds import checker
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.snapshot import CLUSTER

TESTDATA = Path(__file__).parent / "testdata"
FULL = {"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3, "healthyThreshold": 2, "initialJitter": "5s",
        "intervalJitter": "6s", "intervalJitterPercent": 10, "healthyPanicThreshold": 60, "failTrafficOnPanic": True,
        "noTrafficInterval": "10s", "eventLogPath": "/tmp/hc.log", "alwaysLogHealthCheckFailures": True,
        "reuseConnection": False,
        "tcp": {"send": "ping", "receive": ["pong"]},
        "http": {"path": "/health", "expectedStatuses": [200, 204], "requestHeadersToAdd": {
            "set": [{"name": "x-check", "value": "a,b"}], "add": [{"name": "accept", "value": "text/plain"}]}},
        "grpc": {"serviceName": "health", "authority": "backend"}}


def rules(service: str | None, conf: dict[str, Any]) -> MhcRules:
    ref = TargetRef("MeshService", service) if service else TargetRef("Mesh")
    return MhcRules(matched=Matched(KIND, to=(Item("p", 0, 0, conf, ref),)))


CASES: dict[str, MhcRules] = {
    "full_conf_http_and_tcp_destinations": rules(None, FULL),
    "defaults_http_path_only": rules("backend", {"http": {"path": "/health"}}),
    "http_disabled_falls_back_to_tcp": rules("backend", {"http": {"disabled": True}, "tcp": {}}),
}


def _clusters(r: MhcRules, **extra: Any) -> dict[str, Any]:
    return generate_with({KIND: r, **extra}).messages()[CLUSTER]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    mine = {n: c for n, c in _clusters(CASES[case]).items() if c.health_checks}
    assert mine, "the conf changed no cluster"
    assert_golden(resources_to_plain({CLUSTER: mine}), f"xds_{case}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(generate_with({KIND: CASES[case]}).messages(), tmp_path, "spiffe://default/web")


@pytest.mark.parametrize(("conf", "protocol", "want"), [
    ({"http": {}}, "http", "http"), ({"http": {}}, "http2", "http"), ({"http": {}}, "tcp", None),
    ({"tcp": {}}, "http", "tcp"), ({"http": {"disabled": True}, "tcp": {}}, "http", "tcp"),
    ({"grpc": {}}, "grpc", "grpc"), ({"grpc": {"disabled": True}, "tcp": {}}, "grpc", "tcp"),
    ({"grpc": {}}, "http", None), ({"tcp": {}}, "kafka", None), ({"tcp": {"disabled": True}}, "tcp", None),
])
def test_checker_follows_destination_protocol(conf: dict[str, Any], protocol: str, want: str | None) -> None:
    assert checker(conf, protocol) == want


def test_full_conf_picks_http_for_backend_and_tcp_for_db() -> None:
    clusters = _clusters(CASES["full_conf_http_and_tcp_destinations"])
    assert clusters["backend"].health_checks[0].HasField("http_health_check")
    assert clusters["db"].health_checks[0].HasField("tcp_health_check")
    assert clusters["db"].health_checks[0].tcp_health_check.send.text == b"ping".hex()


def test_circuit_breaker_overrides_the_panic_threshold() -> None:
    mcb = McbRules(matched=Matched("MeshCircuitBreaker", to=(Item("cb", 0, 0, {"outlierDetection": {
        "healthyPanicThreshold": 0, "detectors": {"totalFailures": {"consecutive": 5}}}}, TargetRef("Mesh")),)))
    both = _clusters(rules("backend", {"healthyPanicThreshold": 60, "tcp": {}}), MeshCircuitBreaker=mcb)["backend"]
    assert both.health_checks and both.common_lb_config.healthy_panic_threshold.value == 0
    assert both.outlier_detection.consecutive_5xx.value == 5


def test_outbound_cluster_stays_shared_per_conf() -> None:
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips)
    conf = {"http": {"path": "/health"}}
    a = generate_with({KIND: rules("backend", conf)}, ctx=ctx).get(CLUSTER, "backend")
    b = generate_with({KIND: rules("backend", dict(conf))}, ctx=ctx).get(CLUSTER, "backend")
    c = generate_with({KIND: rules("backend", {"http": {"path": "/other"}})}, ctx=ctx).get(CLUSTER, "backend")
    assert a is not None and b is not None and c is not None
    assert a.shared is not None and a.shared is b.shared and c.shared is not a.shared


def test_inspect_shows_merged_conf_per_outbound() -> None:
    plugin = POLICY_KINDS[KIND]
    docs = [{"type": KIND, "mesh": "default", "name": "zz-all", "spec": {"to": [
                {"targetRef": {"kind": "Mesh"}, "default": {"interval": "10s", "tcp": {}}}]}},
            {"type": KIND, "mesh": "default", "name": "backend", "spec": {"to": [
                {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"interval": "2s", "http": {"path": "/health"}}}]}}]
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips,
                      policies={KIND: [plugin.parse(d) for d in docs]})
    view = next(k for k in kind_policies(build_proxy(ctx, CLIENT)) if k.kind == KIND)
    assert {o.service: o.conf for o in view.outbounds} == {
        "backend": {"interval": "2s", "tcp": {}, "http": {"path": "/health"}},
        "db": {"interval": "10s", "tcp": {}}}


def test_health_check_and_circuit_breaker_together_stay_shared() -> None:
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips)

    def both(path: str) -> Any:
        mcb = McbRules(matched=Matched("MeshCircuitBreaker", to=(Item("cb", 0, 0, {"connectionLimits": {
            "maxConnections": 7}}, TargetRef("Mesh")),)))
        return generate_with({KIND: rules("backend", {"http": {"path": path}}), "MeshCircuitBreaker": mcb},
                             ctx=ctx).get(CLUSTER, "backend")

    a, b, c = both("/health"), both("/health"), both("/other")
    assert a.shared is not None and a.shared is b.shared and c.shared is not a.shared
    assert a.message.health_checks[0].http_health_check.path == "/health"
    assert c.message.health_checks[0].http_health_check.path == "/other"  # not the /health cluster's MCB edit
    assert c.message.circuit_breakers.thresholds[0].max_connections.value == 7
