"""MeshTrace: Kuma's YAML accepted unchanged, bad specs refused at exact paths, the merged conf, and the Envoy
resources (goldens, checked by the real Envoy): HCM tracing on every HTTP listener and capture chain, none on TCP,
the collector cluster built from the URL, Kuma's mesh/zone tags, and the shared capture listener still shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.trace.v3 import datadog_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshtrace import MeshTracePlugin, TraceRules
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.listener import HCM
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

PLUGIN = MeshTracePlugin()
TESTDATA = Path(__file__).parent / "testdata"

# Kuma's documented shapes (reference §15 and the policy's docs), field for field.
DOCS = ["""
type: MeshTrace
name: trace-default
mesh: default
spec:
  default:
    backends: [{type: Zipkin, zipkin: {url: "http://jaeger-collector:9411/api/v2/spans"}}]
    sampling: {overall: 80, random: 60, client: 40}
    tags: [{name: team, literal: core}, {name: env, header: {name: x-env, default: prod}}]
""", """
type: MeshTrace
name: default
mesh: default
spec:
  targetRef:
    kind: Mesh
  default:
    tags:
      - name: team
        literal: core
      - name: version
        header:
          name: x-version
    sampling:
      overall: "80.5"
    backends:
      - type: Zipkin
        zipkin:
          url: http://jaeger-collector:9411/api/v2/spans
          apiVersion: httpJson
          traceId128bit: true
          sharedSpanContext: false
""", """
type: MeshTrace
name: default
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  default:
    backends:
      - type: Datadog
        datadog:
          url: http://127.0.0.1:8126
          splitService: true
""", """
type: MeshTrace
name: default
mesh: default
spec:
  targetRef:
    kind: Mesh
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry:
          endpoint: otel-collector:4317
""", """
type: MeshTrace
name: default
mesh: default
spec:
  targetRef:
    kind: Mesh
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry:
          backendRef:
            kind: MeshOpenTelemetryBackend
            name: otel-collector
""", """
type: MeshTrace
name: no-tracing
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  default:
    backends: []
"""]


@pytest.mark.parametrize("doc", DOCS)
def test_kuma_yaml_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    PLUGIN.parse(parsed)


def mtr(default: Any, name: str = "p", target: Any = None) -> dict[str, Any]:
    return {"type": "MeshTrace", "mesh": "default", "name": name,
            "spec": {"targetRef": target or {"kind": "Mesh"}, "default": default}}


ZIPKIN = {"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}
P = "spec.default"
BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("two backends", {"backends": [ZIPKIN, ZIPKIN]}, [(f"{P}.backends", "must hold at most 1 backend")]),
    ("type without its section, another section", {"backends": [{"type": "Zipkin", "datadog": {
        "url": "http://dd:8126"}}]},
     [(f"{P}.backends[0].datadog", "must not be defined when type is Zipkin"),
      (f"{P}.backends[0].zipkin", "must be defined")]),
    ("unknown type", {"backends": [{"type": "Jaeger"}]},
     [(f"{P}.backends[0].type", "must be one of: Zipkin, Datadog, OpenTelemetry")]),
    ("zipkin url and api version", {"backends": [{"type": "Zipkin", "zipkin": {
        "url": "zipkin:9411/api/v2/spans", "apiVersion": "grpc", "traceId128bit": "yes"}}]},
     [(f"{P}.backends[0].zipkin.url", "must be a valid http:// or https:// URL"),
      (f"{P}.backends[0].zipkin.apiVersion", "must be one of: httpJson, httpProto"),
      (f"{P}.backends[0].zipkin.traceId128bit", "must be true or false")]),
    ("zipkin url missing", {"backends": [{"type": "Zipkin", "zipkin": {}}]},
     [(f"{P}.backends[0].zipkin.url", "must be defined")]),
    ("datadog url rules", {"backends": [{"type": "Datadog", "datadog": {
        "url": "https://user@dd/v0.4?x=1#f"}}]},
     [(f"{P}.backends[0].datadog.url", "scheme must be http"),
      (f"{P}.backends[0].datadog.url", "port must be defined (1-65535)"),
      (f"{P}.backends[0].datadog.url", "must not contain a user"),
      (f"{P}.backends[0].datadog.url", "must not contain a path"),
      (f"{P}.backends[0].datadog.url", "must not contain a query"),
      (f"{P}.backends[0].datadog.url", "must not contain a fragment")]),
    ("datadog port out of range", {"backends": [{"type": "Datadog", "datadog": {"url": "http://dd:70000"}}]},
     [(f"{P}.backends[0].datadog.url", "must be a valid URL with a valid port")]),
    ("otel both and neither", {"backends": [{"type": "OpenTelemetry", "openTelemetry": {
        "endpoint": "otel:4317", "backendRef": {"kind": "MeshService", "name": "x"}}}]},
     [(f"{P}.backends[0].openTelemetry", "must define exactly one of: endpoint, backendRef"),
      (f"{P}.backends[0].openTelemetry.backendRef.kind", "must be MeshOpenTelemetryBackend")]),
    ("otel bad endpoint", {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "bad host:1"}}]},
     [(f"{P}.backends[0].openTelemetry.endpoint", "must be host:port (e.g. otel-collector:4317)")]),
    ("sampling out of range, float, bool", {"sampling": {"overall": 101, "client": 12.5, "random": True}},
     [(f"{P}.sampling.overall", "must be between 0 and 100"),
      (f"{P}.sampling.client", "must be a whole number or a decimal string such as \"12.5\""),
      (f"{P}.sampling.random", "must be a whole number or a decimal string such as \"12.5\"")]),
    ("sampling decimal string out of range", {"sampling": {"random": "100.5"}},
     [(f"{P}.sampling.random", "must be between 0 and 100")]),
    ("tags literal xor header", {"tags": [{"name": "a"}, {"name": "b", "literal": "x", "header": {"name": "h"}},
                                          {"literal": "x"}, {"name": "c", "header": {"default": "d"}}]},
     [(f"{P}.tags[0]", "must define either literal or header"),
      (f"{P}.tags[1]", "must define only one of literal and header"),
      (f"{P}.tags[2].name", "must be defined"),
      (f"{P}.tags[3].header.name", "must be defined")]),
    ("unknown fields", {"backend": [], "sampling": {"all": 1}},
     [(f"{P}.backend", "unknown field (expected one of: backends, sampling, tags)"),
      (f"{P}.sampling.all", "unknown field (expected one of: client, overall, random)")]),
]


@pytest.mark.parametrize(("default", "want"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_every_violation_with_path(default: Any, want: list[tuple[str, str]]) -> None:
    assert PLUGIN.validate(mtr(default)) == want


def test_sections_other_than_default_refused() -> None:
    doc = mtr({})
    doc["spec"]["to"] = []
    assert [p for p, _ in PLUGIN.validate(doc)] == ["spec.to"]


MESH = parse_mesh({"type": "Mesh", "name": "default",
                   "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})


def dataplane(name: str, address: str, inbounds: list[tuple[int, str, str]], outbound: list[tuple[int, str]],
              tproxy: bool = False, zone: str = "") -> Any:
    net: dict[str, Any] = {"address": address, "inbound": [
        {"port": p, "servicePort": p + 1, "tags": {"kuma.io/service": s, "kuma.io/protocol": proto,
                                                   **({"kuma.io/zone": zone} if zone else {})}}
        for p, s, proto in inbounds], "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for p, s in outbound]}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    return parse_dataplane({"type": "Dataplane", "mesh": "default", "name": name, "networking": net})


BACKEND = dataplane("backend-1", "10.0.0.2", [(8080, "backend", "http"), (5432, "db", "tcp")], [(9001, "web")],
                    zone="zone-1")
WEB = dataplane("web-1", "10.0.0.1", [(8080, "web", "http")], [(9002, "backend"), (9003, "db")])
WORLD = [BACKEND, WEB]
FULL = {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://10.9.9.9:9411/api/v2/spans",
                                                   "traceId128bit": True, "apiVersion": "httpProto"}}],
        "sampling": {"overall": 80, "client": "40.5", "random": 60},
        "tags": [{"name": "team", "literal": "core"}, {"name": "env", "header": {"name": "x-env", "default": "prod"}},
                 {"name": "kuma.zone", "literal": "mine"}]}
CASES: dict[str, tuple[list[dict[str, Any]], Any]] = {
    "zipkin_full": ([mtr(FULL)], BACKEND),
    "otel_endpoint": ([mtr({"backends": [{"type": "OpenTelemetry", "openTelemetry": {
        "endpoint": "otel-collector:4317"}}]})], WEB),
    "datadog_split_service": ([mtr({"backends": [{"type": "Datadog", "datadog": {
        "url": "http://127.0.0.1:8126", "splitService": True}}]})], BACKEND),
    # the MeshService policy replaces the backends list and switches tracing off for backend only
    "more_specific_switches_off": ([mtr(FULL, "mesh-wide"), mtr({"backends": []}, "off",
                                                                {"kind": "MeshService", "name": "backend"})], BACKEND),
}


def ctx(policies: list[dict[str, Any]], dps: list[Any] = WORLD) -> MeshContext:
    return MeshContext(MESH, dps, {"MeshTrace": policies})


def resources(policies: list[dict[str, Any]], dp: Any, dps: list[Any] = WORLD) -> dict[str, dict[str, Any]]:
    c = ctx(policies, dps)
    return generate(c, dp, build_proxy(c, dp)).messages()


def tracing_of(listener: Any) -> list[hcm_pb2.HttpConnectionManager.Tracing | None]:
    """Per chain of `listener`: the HCM's tracing, or None for a chain without an HCM or without tracing."""
    out: list[hcm_pb2.HttpConnectionManager.Tracing | None] = []
    chains = [*listener.filter_chains, *([listener.default_filter_chain]
                                         if listener.HasField("default_filter_chain") else [])]
    for chain in chains:
        hcm = next((f for f in chain.filters if f.name == HCM), None)
        if hcm is None:
            out.append(None)
            continue
        m = hcm_pb2.HttpConnectionManager()
        hcm.typed_config.Unpack(m)
        out.append(m.tracing if m.HasField("tracing") else None)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    policies, dp = CASES[case]
    res = resources(policies, dp)
    assert_golden(resources_to_plain({LISTENER: res[LISTENER], CLUSTER: {
        n: c for n, c in res[CLUSTER].items() if n.startswith("meshtrace:")}}), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    policies, dp = CASES[case]
    envoy_accepts(resources(policies, dp), tmp_path, f"spiffe://default/{dp.networking.inbound[0].service}")


def test_http_listeners_traced_tcp_not() -> None:
    listeners = resources([mtr(FULL)], BACKEND)[LISTENER]
    http_in, tcp_in = listeners["inbound:10.0.0.2:8080"], listeners["inbound:10.0.0.2:5432"]
    [traced] = tracing_of(http_in)
    assert traced is not None and traced.provider.name == "envoy.tracers.zipkin"
    assert tracing_of(tcp_in) == [None]
    assert (traced.overall_sampling.value, traced.client_sampling.value, traced.random_sampling.value) == (
        80, 40.5, 60)
    zipkin = zipkin_pb2.ZipkinConfig()
    traced.provider.typed_config.Unpack(zipkin)
    assert (zipkin.collector_cluster, zipkin.collector_endpoint, zipkin.collector_hostname) == (
        "meshtrace:zipkin", "/api/v2/spans", "10.9.9.9:9411")
    assert zipkin.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_PROTO and zipkin.trace_id_128bit
    # the user's kuma.zone wins over the proxy's zone tag; kuma.mesh is added
    tags = [(t.tag, t.WhichOneof("type"), t.literal.value or t.request_header.name) for t in traced.custom_tags]
    assert tags == [("team", "literal", "core"), ("env", "request_header", "x-env"), ("kuma.zone", "literal", "mine"),
                    ("kuma.mesh", "literal", "default")]
    assert traced.custom_tags[1].request_header.default_value == "prod"


def test_outbound_listener_otel_and_collector_cluster() -> None:
    res = resources(CASES["otel_endpoint"][0], WEB)
    for name in ("outbound:127.0.0.1:9002", "inbound:10.0.0.1:8080"):
        [traced] = tracing_of(res[LISTENER][name])
        assert traced is not None and traced.provider.name == "envoy.tracers.opentelemetry"
        otel = opentelemetry_pb2.OpenTelemetryConfig()
        traced.provider.typed_config.Unpack(otel)
        assert (otel.service_name, otel.grpc_service.envoy_grpc.cluster_name) == ("web", "meshtrace:opentelemetry")
        assert [t.tag for t in traced.custom_tags] == ["kuma.mesh"]  # web has no zone tag
    assert tracing_of(res[LISTENER]["outbound:127.0.0.1:9003"]) == [None]  # db is TCP
    cluster = res[CLUSTER]["meshtrace:opentelemetry"]
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    addr = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("otel-collector", 4317)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in cluster.typed_extension_protocol_options


def test_datadog_split_service_names() -> None:
    listeners = resources(CASES["datadog_split_service"][0], BACKEND)[LISTENER]

    def service(listener: str) -> str:
        [traced] = tracing_of(listeners[listener])
        assert traced is not None
        dd = datadog_pb2.DatadogConfig()
        traced.provider.typed_config.Unpack(dd)
        return dd.service_name

    assert service("inbound:10.0.0.2:8080") == "backend_INBOUND"
    assert service("outbound:127.0.0.1:9001") == "backend_OUTBOUND_web"


def test_transparent_capture_chains_traced_and_still_shared() -> None:
    a = dataplane("web-1", "10.0.0.1", [(8080, "web", "http")], [], tproxy=True)
    b = dataplane("web-2", "10.0.0.3", [(8080, "web", "http")], [], tproxy=True)
    dps = [BACKEND, a, b]
    c = ctx([mtr(FULL)], dps)
    sets = [generate(c, dp, build_proxy(c, dp)) for dp in (a, b)]
    captures = [rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH) for rs in sets]
    assert all(e is not None and e.shared is not None for e in captures)
    assert captures[0].shared is captures[1].shared  # type: ignore[union-attr]
    traced = tracing_of(captures[0].message)  # type: ignore[union-attr]
    assert traced[-1] is None  # the passthrough default chain is TCP
    assert any(t is not None and t.provider.name == "envoy.tracers.zipkin" for t in traced)
    inbound = tracing_of(sets[0].get(LISTENER, names.INBOUND_PASSTHROUGH).message)  # type: ignore[union-attr]
    assert inbound and all(t is not None for t in inbound[:1])


def test_no_policy_no_tracing_and_backend_ref_warns() -> None:
    assert all(t is None for listener in resources([], BACKEND)[LISTENER].values() for t in tracing_of(listener))
    ref = mtr({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"backendRef": {
        "kind": "MeshOpenTelemetryBackend", "name": "otel"}}}]})
    c = ctx([ref])
    p = build_proxy(c, BACKEND)
    r = p.rules["MeshTrace"]
    assert isinstance(r, TraceRules) and r.conf is None
    assert "backendRef" in r.warnings[0]
    view = next(k for k in kind_policies(p) if k.kind == "MeshTrace")
    assert view.policies == ["p"] and view.warnings == list(r.warnings)


def test_merge_more_specific_wins_and_inspect() -> None:
    c = ctx(CASES["more_specific_switches_off"][0])
    backend, web = build_proxy(c, BACKEND), build_proxy(c, WEB)
    assert backend.rules["MeshTrace"].conf is None  # type: ignore[attr-defined]
    r = web.rules["MeshTrace"]
    assert isinstance(r, TraceRules) and r.conf is not None and r.service == "web"
    view = next(k for k in kind_policies(web) if k.kind == "MeshTrace")
    assert view.inbounds[0].conf.sampling.overall == 80


def test_shared_capture_listener_differs_when_only_split_service_differs() -> None:
    """Two proxies of one service, one with splitService: the memoised capture listener must not be reused."""
    a = dataplane("web-1", "10.0.0.1", [(8080, "web", "http")], [], tproxy=True)
    b = dataplane("web-2", "10.0.0.3", [(8080, "web", "http")], [], tproxy=True)
    dd = {"type": "Datadog", "datadog": {"url": "http://127.0.0.1:8126"}}
    split = {"type": "Datadog", "datadog": {"url": "http://127.0.0.1:8126", "splitService": True}}
    c = ctx([mtr({"backends": [dd]}, "all"),
             mtr({"backends": [split]}, "split", {"kind": "Dataplane", "name": "web-2"})], [BACKEND, a, b])
    services = []
    for dp in (a, b):
        capture = generate(c, dp, build_proxy(c, dp)).get(LISTENER, names.OUTBOUND_PASSTHROUGH)
        assert capture is not None
        names_seen = set()
        for t in tracing_of(capture.message):
            if t is not None:
                cfg = datadog_pb2.DatadogConfig()
                t.provider.typed_config.Unpack(cfg)
                names_seen.add(cfg.service_name)
        services.append(names_seen)
    assert services == [{"web"}, {"web_OUTBOUND_backend", "web_OUTBOUND_web"}]
