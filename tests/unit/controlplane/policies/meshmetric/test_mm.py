"""MeshMetric: Kuma's YAML accepted unchanged, bad specs refused at exact paths, Kuma's merge (lists replaced,
appendProfiles appended), and the Envoy side (Prometheus listener → hijacker socket, `/meshmetric` on the dynconf
listener with or without a transparent proxy) loaded by the real Envoy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from unit.controlplane.xds._xds_testlib import envoy_accepts

from dpagent.controlplane.policies.meshmetric import MeshMetricPlugin, MmRules
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

PLUGIN = MeshMetricPlugin()

KUMA_DOC = """
type: MeshMetric
name: metrics-default
mesh: default
spec:
  default:
    sidecar:
      profiles:
        appendProfiles: [{name: Basic}]
        exclude: [{type: Regex, match: "envoy_cluster_external_upstream_rq_.*"}]
        include: [{type: Exact, match: envoy_cluster_default_total_match_count}]
    applications: [{name: app, path: /metrics, port: 8888}]
    backends: [{type: Prometheus, prometheus: {port: 5670, path: /metrics, tls: {mode: Disabled}}}]
"""
KUMA_OTEL = """
type: MeshMetric
name: otel
mesh: default
spec:
  targetRef:
    kind: Mesh
  default:
    sidecar:
      includeUnused: true
    backends:
      - type: OpenTelemetry
        openTelemetry:
          endpoint: otel-collector.observability.svc:4317
          refreshInterval: 30s
"""


@pytest.mark.parametrize("doc", [KUMA_DOC, KUMA_OTEL])
def test_kuma_yaml_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    PLUGIN.parse(parsed)


def mm(default: Any, name: str = "p", target: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"default": default}
    if target:
        spec["targetRef"] = target
    return {"type": "MeshMetric", "mesh": "default", "name": name, "spec": spec}


def test_every_violation_with_its_path() -> None:
    bad = mm({
        "sidecar": {"includeUnused": "yes", "profiles": {
            "appendProfiles": [{"name": "Most"}],
            "exclude": [{"type": "Regex", "match": "envoy_(unclosed"}, {"type": "Glob", "match": "x"}],
            "include": [{"type": "Exact"}]}},
        "applications": [{"name": "app", "path": "metrics"}, {"port": 70000}],
        "backends": [{"type": "Prometheus"}, {"type": "Zipkin"},
                     {"type": "Prometheus", "prometheus": {"port": 5670, "tls": {"mode": "Sometimes"}}},
                     {"type": "Prometheus", "prometheus": {"port": 5670}},
                     {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "collector", "refreshInterval": "soon"}}],
        "extra": 1})
    got = PLUGIN.validate(bad)
    paths = [p for p, _ in got]
    assert paths == [
        "spec.default.extra",
        "spec.default.sidecar.includeUnused",
        "spec.default.sidecar.profiles.appendProfiles[0].name",
        "spec.default.sidecar.profiles.include[0].match",
        "spec.default.sidecar.profiles.exclude[0].match",
        "spec.default.sidecar.profiles.exclude[1].type",
        "spec.default.applications[0].port",
        "spec.default.applications[0].path",
        "spec.default.applications[1].port",
        "spec.default.backends[0].prometheus",
        "spec.default.backends[1].type",
        "spec.default.backends[2].prometheus.tls.mode",
        "spec.default.backends[4].openTelemetry.endpoint",
        "spec.default.backends[4].openTelemetry.refreshInterval",
        "spec.default.backends[3].prometheus.port",
    ], got
    assert "regular expression" in dict(got)["spec.default.sidecar.profiles.exclude[0].match"]


def test_top_level_kind_checked() -> None:
    doc = mm({}, target={"kind": "MeshHTTPRoute", "name": "x"})
    assert [p for p, _ in PLUGIN.validate(doc)] == ["spec.targetRef.kind"]


MESH = parse_mesh({"type": "Mesh", "name": "default"})
DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
    "address": "10.0.0.2", "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web"}}]}})
TP_DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-2", "networking": {
    "address": "10.0.0.3", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
    "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}})


def rules_for(policies: list[dict[str, Any]], dp: Any = DP) -> MmRules:
    c = MeshContext(MESH, [DP, TP_DP], {"MeshMetric": policies})
    r = build_proxy(c, dp).rules["MeshMetric"]
    assert isinstance(r, MmRules)
    return r


def test_merge_lists_replaced_and_profiles_appended() -> None:
    wide = mm({"sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}],
                                        "exclude": [{"type": "Prefix", "match": "envoy_server"}]}},
               "applications": [{"name": "a", "port": 1000}, {"name": "b", "port": 2000}],
               "backends": [{"type": "Prometheus", "prometheus": {"port": 5670}}]}, "mesh-wide")
    mine = mm({"sidecar": {"profiles": {"appendProfiles": [{"name": "None"}]}},
               "applications": [{"name": "c", "port": 3000}],
               "backends": [{"type": "Prometheus", "prometheus": {"port": 5671, "path": "/m"}}]}, "web",
              {"kind": "MeshService", "name": "web"})
    conf = rules_for([mine, wide]).conf
    assert conf is not None and conf.sidecar is not None and conf.sidecar.profiles is not None
    assert [p.name for p in conf.sidecar.profiles.append_profiles] == ["Basic", "None"]
    assert [e.match for e in conf.sidecar.profiles.exclude] == ["envoy_server"]
    assert [a.name for a in conf.applications] == ["c"]
    assert [(b.prometheus.port, b.prometheus.path) for b in conf.backends if b.prometheus] == [(5671, "/m")]
    assert rules_for([]).conf is None


def _dynconf_body(listener: Any, path: str) -> dict[str, Any]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    bodies = [r.direct_response.body.inline_string for r in hcm.route_config.virtual_hosts[0].routes
              if r.match.path == path and r.direct_response.status == 200]
    assert len(bodies) == 1
    return json.loads(bodies[0])  # type: ignore[no-any-return]


@pytest.mark.parametrize("dp", [DP, TP_DP], ids=["plain", "tproxy"])
def test_listener_hijacker_and_dynconf(dp: Any, tmp_path: Any) -> None:
    policy = yaml.safe_load(KUMA_DOC)
    c = MeshContext(MESH, [DP, TP_DP], {"MeshMetric": [policy]})
    res = generate(c, dp, build_proxy(c, dp)).messages()
    listener = res[LISTENER][names.prometheus_listener("")]
    assert listener.address.socket_address.address == dp.networking.address
    assert listener.address.socket_address.port_value == 5670
    hijacker = res[CLUSTER][names.METRICS_HIJACKER_CLUSTER]
    assert hijacker.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path == \
        names.METRICS_HIJACKER_SOCKET
    body = _dynconf_body(res[LISTENER][names.DYNCONF_LISTENER], names.DYNCONF_MESHMETRIC_PATH)
    metrics = body["observability"]["metrics"]
    assert metrics["applications"] == [{"address": "", "name": "app", "path": "/metrics", "port": 8888}]
    assert metrics["sidecar"]["profiles"]["exclude"] == [{"match": "envoy_cluster_external_upstream_rq_.*",
                                                          "type": "Regex"}]
    if dp is TP_DP:  # the DNS table stays beside it
        _dynconf_body(res[LISTENER][names.DYNCONF_LISTENER], names.DYNCONF_DNS_PATH)
    envoy_accepts(res, tmp_path, "spiffe://default/web")


def test_no_policy_no_listener_and_unsupported_tls_warned() -> None:
    c = MeshContext(MESH, [DP], {})
    res = generate(c, DP, build_proxy(c, DP)).messages()
    assert names.prometheus_listener("") not in res.get(LISTENER, {})
    assert names.DYNCONF_LISTENER not in res.get(LISTENER, {})
    r = rules_for([mm({"backends": [{"type": "Prometheus", "prometheus": {"tls": {"mode": "ProvidedTLS"}}}]})])
    assert r.prometheus() == [] and "ProvidedTLS" in r.warnings[0]


def test_shared_dynconf_bytes_for_same_conf() -> None:
    """Two tproxy proxies with the same DNS table and conf share one serialised dynconf listener."""
    other = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-3", "networking": {
        "address": "10.0.0.4", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
        "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}})
    c = MeshContext(MESH, [TP_DP, other], {"MeshMetric": [yaml.safe_load(KUMA_DOC)]})
    a = generate(c, TP_DP, build_proxy(c, TP_DP)).get(LISTENER, names.DYNCONF_LISTENER)
    b = generate(c, other, build_proxy(c, other)).get(LISTENER, names.DYNCONF_LISTENER)
    assert a is not None and b is not None and a.shared is not None and a.shared is b.shared


def test_otel_backend_ref_warned() -> None:
    r = rules_for([mm({"backends": [{"type": "OpenTelemetry", "openTelemetry": {
        "backendRef": {"kind": "MeshExternalService", "name": "otel"}}}]})])
    assert "backendRef" in r.warnings[0]
