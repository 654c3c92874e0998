"""MeshTrace → Envoy: `tracing` on every HTTP connection manager of the proxy (inbound and outbound listeners, and
the transparent-proxy capture chains), and one cluster toward the collector built from the backend's URL
(reference kuma-policies.md §12.2). TCP chains are not traced, as in Kuma.

The provider carries the collector cluster's name, so both proxies of a hop report to the same backend and
propagate the same trace context (B3 for Zipkin, W3C traceparent for OpenTelemetry, Datadog's headers for Datadog).
The outbound capture listener is shared between proxies; its traced copy is memoised by (its bytes, the tracing
config), so proxies of one service with one MeshTrace still share it.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import datadog_pb2, http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshtrace.api import (
    DATADOG,
    KIND,
    OPENTELEMETRY,
    ZIPKIN,
    Backend,
    Conf,
    otel_target,
    percent,
)
from dpagent.controlplane.policies.meshtrace.plugin import TraceRules
from dpagent.controlplane.xds.builders.cluster import CONNECT_TIMEOUT, _http2, load_assignment
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.builders.listener import HCM
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.validation import is_ip

ZIPKIN_TRACER = "envoy.tracers.zipkin"
DATADOG_TRACER = "envoy.tracers.datadog"
OTEL_TRACER = "envoy.tracers.opentelemetry"
TLS_SOCKET = "envoy.transport_sockets.tls"
MESH_TAG, ZONE_TAG = "kuma.mesh", "kuma.zone"
# Kuma's (legacy) collector cluster names
CLUSTER_NAMES = {ZIPKIN: "meshtrace:zipkin", DATADOG: "meshtrace:datadog", OPENTELEMETRY: "meshtrace:opentelemetry"}
# which listeners carry HTTP connection managers worth tracing (not the agent's own dynconf listener)
_TRACED_ORIGINS = (Origin.INBOUND, Origin.OUTBOUND, Origin.TRANSPARENT)


def collector(backend: Backend) -> tuple[str, int, bool]:
    """(host, port, tls) of the backend's collector."""
    if backend.type == OPENTELEMETRY:
        assert backend.open_telemetry is not None and backend.open_telemetry.endpoint is not None
        host, port = otel_target(backend.open_telemetry.endpoint)
        return host, port, False
    url = backend.zipkin.url if backend.zipkin is not None else backend.datadog.url  # type: ignore[union-attr]
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


def collector_cluster(backend: Backend) -> cluster_pb2.Cluster:
    """STATIC for an IP address, STRICT_DNS (re-resolved, every address used) for a hostname; HTTP/2 for OTLP/gRPC;
    TLS with the URL's host as SNI for an https:// Zipkin URL (the certificate is not verified: no CA is known)."""
    name = CLUSTER_NAMES[backend.type]
    host, port, tls = collector(backend)
    c = cluster_pb2.Cluster(name=name, connect_timeout=seconds(CONNECT_TIMEOUT),
                            type=cluster_pb2.Cluster.STATIC if is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
                            load_assignment=load_assignment(name, [(host, port)]))
    if not is_ip(host):
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if backend.type == OPENTELEMETRY:
        _http2(c)
    if tls:
        c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(
            tls_pb2.UpstreamTlsContext(sni=host))))
    return c


def provider(backend: Backend, service: str) -> http_tracer_pb2.Tracing.Http:
    """The tracer; Zipkin reports the node's cluster (the bootstrap sets it to the proxy's service) as its local
    service, the others take `service` explicitly."""
    cluster = CLUSTER_NAMES[backend.type]
    if backend.type == ZIPKIN:
        z = backend.zipkin
        assert z is not None
        parts = urlsplit(z.url)
        cfg = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster, collector_endpoint=parts.path or "/api/v2/spans",
            collector_hostname=parts.netloc.rpartition("@")[2], trace_id_128bit=z.trace_id128bit,
            shared_span_context=wrappers_pb2.BoolValue(value=z.shared_span_context),
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_PROTO if z.api_version == "httpProto"
            else zipkin_pb2.ZipkinConfig.HTTP_JSON)
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER, typed_config=pack(cfg))
    if backend.type == DATADOG:
        assert backend.datadog is not None
        host, port, _ = collector(backend)
        dd = datadog_pb2.DatadogConfig(collector_cluster=cluster, service_name=service,
                                       collector_hostname=f"{host}:{port}")
        return http_tracer_pb2.Tracing.Http(name=DATADOG_TRACER, typed_config=pack(dd))
    otel = opentelemetry_pb2.OpenTelemetryConfig(
        service_name=service,
        grpc_service=grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=cluster)))
    return http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=pack(otel))


def custom_tags(conf: Conf, mesh: str, zone: str) -> list[custom_tag_pb2.CustomTag]:
    """The user's tags in order, then Kuma's literal mesh and zone tags unless the user set those names."""
    out: list[custom_tag_pb2.CustomTag] = []
    for t in conf.tags:
        if t.literal is not None:
            out.append(custom_tag_pb2.CustomTag(tag=t.name, literal=custom_tag_pb2.CustomTag.Literal(value=t.literal)))
        elif t.header is not None:
            out.append(custom_tag_pb2.CustomTag(tag=t.name, request_header=custom_tag_pb2.CustomTag.Header(
                name=t.header.name, default_value=t.header.default or "")))
    taken = {t.name for t in conf.tags}
    for name, value in ((MESH_TAG, mesh), (ZONE_TAG, zone)):
        if value and name not in taken:
            out.append(custom_tag_pb2.CustomTag(tag=name, literal=custom_tag_pb2.CustomTag.Literal(value=value)))
    return out


def tracing(rules: TraceRules, service: str) -> hcm_pb2.HttpConnectionManager.Tracing:
    """HCM.tracing; `service` differs from the proxy's only for Datadog's splitService."""
    conf, backend = rules.conf, rules.backend
    assert conf is not None and backend is not None
    out = hcm_pb2.HttpConnectionManager.Tracing(provider=provider(backend, service),
                                                custom_tags=custom_tags(conf, rules.mesh, rules.zone),
                                                spawn_upstream_span=wrappers_pb2.BoolValue(value=False))
    s = conf.sampling
    if s is not None:
        for field, value in (("overall_sampling", s.overall), ("client_sampling", s.client),
                             ("random_sampling", s.random)):
            if value is not None:
                getattr(out, field).CopyFrom(percent_pb2.Percent(value=percent(value)))
    return out


def _split(rules: TraceRules) -> bool:
    b = rules.backend
    return b is not None and b.type == DATADOG and b.datadog is not None and b.datadog.split_service


def _trace_listener(listener: listener_pb2.Listener, tracer: Callable[[listener_pb2.FilterChain], str | None],
                    make: Callable[[str], hcm_pb2.HttpConnectionManager.Tracing]) -> None:
    chains = [*listener.filter_chains, *([listener.default_filter_chain]
                                         if listener.HasField("default_filter_chain") else [])]
    for chain in chains:
        service = tracer(chain)
        if service is None:
            continue
        for f in chain.filters:
            if f.name == HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                hcm.tracing.CopyFrom(make(service))
                f.typed_config.CopyFrom(pack(hcm))


def configure(rs: ResourceSet, ctx: MeshView, rules: TraceRules) -> None:
    backend = rules.backend
    assert backend is not None
    name = CLUSTER_NAMES[backend.type]
    if rs.get(CLUSTER, name) is None:
        rs.add(CLUSTER, name, collector_cluster(backend), Origin.OUTBOUND)  # no service: no outbound policy edits it
    split = _split(rules)
    made: dict[str, hcm_pb2.HttpConnectionManager.Tracing] = {}

    def make(service: str) -> hcm_pb2.HttpConnectionManager.Tracing:
        if service not in made:
            made[service] = tracing(rules, service)
        return made[service]

    def chain_service(entry: Entry) -> Callable[[listener_pb2.FilterChain], str | None]:
        """The name a chain's spans carry: the proxy's service, or Datadog's split `<svc>_INBOUND` /
        `<svc>_OUTBOUND_<destination>`."""
        def pick(chain: listener_pb2.FilterChain) -> str | None:
            if not split:
                return rules.service
            if entry.service:
                return f"{rules.service}_OUTBOUND_{entry.service}"
            if chain.name in entry.chains or entry.inbound:
                return f"{rules.service}_INBOUND"
            if chain.name.startswith("outbound:"):  # a capture chain, xds.names.outbound_chain(service, port)
                return f"{rules.service}_OUTBOUND_{chain.name[len('outbound:'):].rsplit(':', 1)[0]}"
            return rules.service
        return pick

    for origin in _TRACED_ORIGINS:
        for entry in list(rs.entries(LISTENER, origin)):
            pick = chain_service(entry)
            if entry.shared is None:
                _trace_listener(entry.message, pick, make)  # type: ignore[arg-type]
                continue
            source = entry.shared

            def build(source: object = source, pick: Callable[[listener_pb2.FilterChain], str | None] = pick,
                      ) -> listener_pb2.Listener:
                copy = listener_pb2.Listener()
                copy.CopyFrom(source.message)  # type: ignore[attr-defined]
                _trace_listener(copy, pick, make)
                return copy

            shared = getattr(ctx, "shared", None)
            if shared is None:  # a context that cannot memoise: trace a private copy
                _trace_listener(rs.edit(entry), pick, make)  # type: ignore[arg-type]
                continue
            # every input of `build`: the base bytes, the tracing conf (service, mesh and zone included), and
            # whether names are split per chain
            key = (KIND, entry.name, source.digest, split,
                   tracing(rules, rules.service).SerializeToString(deterministic=True))
            rs.replace(entry, shared(key, LISTENER, entry.name, build))
