"""MeshAccessLog → Envoy access loggers on the HCM (HTTP) or tcp_proxy (TCP) of each listener or filter chain.

File: a file access log. Tcp: a file access log on the agent's FIFO (model/accesslog.py) whose JSON lines carry the
collector address and the message; the agent forwards each message. OpenTelemetry: Envoy's OTLP/gRPC logger and a
per-endpoint HTTP/2 cluster. Kuma's placeholders are substituted per listener (formats.py); HTTP routes live in RDS
but the HCM, and so its access_log, lives in the listener, which is why only listeners are edited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format, struct_pb2
from opentelemetry.proto.common.v1 import common_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import inbound_key
from dpagent.controlplane.policies.meshaccesslog.api import FILE, JSON, OTEL, TCP, Backend, Format, split_host_port
from dpagent.controlplane.policies.meshaccesslog.formats import (
    EXTERNAL,
    INBOUND,
    OUTBOUND,
    UNKNOWN_SOURCE,
    LogContext,
    default_format,
)
from dpagent.controlplane.policies.meshaccesslog.plugin import AccessLogRules
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.builders.listener import HCM, TCP_PROXY
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.accesslog import FIFO_NAME
from dpagent.model.dataplane import SERVICE_TAG, Dataplane
from dpagent.model.validation import is_ip

FILE_LOGGER = "envoy.access_loggers.file"
OTEL_LOGGER = "envoy.access_loggers.open_telemetry"
ZONE_TAG = "kuma.io/zone"


def otel_cluster_name(endpoint: str) -> str:
    """One cluster per collector endpoint, shared by every listener that logs there."""
    return f"meshaccesslog:opentelemetry:{endpoint}"


def _format(fmt: Format | None, ctx: LogContext, http: bool) -> substitution_format_string_pb2.SubstitutionFormatString:
    if fmt is not None and fmt.type == JSON:
        out = substitution_format_string_pb2.SubstitutionFormatString(omit_empty_values=fmt.omit_empty_values)
        out.json_format.update({f.key: ctx.substitute(f.value) for f in fmt.json})
        return out
    text = fmt.plain if fmt is not None else default_format(http)
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=ctx.substitute(text) + "\n"),
        omit_empty_values=fmt.omit_empty_values if fmt is not None else False)


def _tcp_line(address: str, fmt: Format | None, ctx: LogContext,
              http: bool) -> substitution_format_string_pb2.SubstitutionFormatString:
    """The agent's line protocol: {"address": ..., "message": <text or object>}, one JSON object per line."""
    out = substitution_format_string_pb2.SubstitutionFormatString(
        omit_empty_values=fmt.omit_empty_values if fmt is not None else False)
    line = struct_pb2.Struct()
    line.update({"address": address})
    if fmt is not None and fmt.type == JSON:
        line.get_or_create_struct("message").update({f.key: ctx.substitute(f.value) for f in fmt.json})
    else:
        line.update({"message": ctx.substitute(fmt.plain if fmt is not None else default_format(http))})
    out.json_format.CopyFrom(line)
    return out


def _otel(backend: Backend, ctx: LogContext, http: bool) -> logs_service_pb2.OpenTelemetryAccessLogConfig:
    otel = backend.open_telemetry
    assert otel is not None
    cfg = logs_service_pb2.OpenTelemetryAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name="MeshAccessLog", transport_api_version=config_source_pb2.V3,
            grpc_service=grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                cluster_name=otel_cluster_name(otel.endpoint)))))
    if otel.body is not None:
        json_format.ParseDict(ctx.substitute_json(otel.body), cfg.body)
    else:
        cfg.body.string_value = ctx.substitute(default_format(http))
    for attr in otel.attributes:
        cfg.attributes.values.append(common_pb2.KeyValue(
            key=attr.key, value=common_pb2.AnyValue(string_value=ctx.substitute(attr.value))))
    return cfg


def access_logs(backends: Sequence[Backend], ctx: LogContext, http: bool) -> list[accesslog_pb2.AccessLog]:
    """One Envoy access logger per backend, in the policy's order."""
    out = []
    for b in backends:
        if b.type == FILE and b.file is not None:
            cfg = file_pb2.FileAccessLog(path=b.file.path, log_format=_format(b.file.format, ctx, http))
            out.append(accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(cfg)))
        elif b.type == TCP and b.tcp is not None:
            cfg = file_pb2.FileAccessLog(path=FIFO_NAME, log_format=_tcp_line(b.tcp.address, b.tcp.format, ctx, http))
            out.append(accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(cfg)))
        elif b.type == OTEL and b.open_telemetry is not None and b.open_telemetry.endpoint:
            out.append(accesslog_pb2.AccessLog(name=OTEL_LOGGER, typed_config=pack(_otel(b, ctx, http))))
    return out


def otel_cluster(endpoint: str) -> cluster_pb2.Cluster:
    """HTTP/2 (gRPC) to the collector; STRICT_DNS when it is named by a hostname."""
    host_port = split_host_port(endpoint)
    assert host_port is not None  # validated
    host, port = host_port
    name = otel_cluster_name(endpoint)
    c = cb.static_cluster(name, host, port, http2=True)
    if not is_ip(host):
        c.type = cluster_pb2.Cluster.STRICT_DNS
    c.connect_timeout.CopyFrom(seconds(5))
    return c


def add_to_filter(f: lc.Filter, ctx: LogContext, backends: Sequence[Backend]) -> bool:
    """Append the loggers to an HCM or tcp_proxy filter; False when it is neither."""
    if f.name == HCM:
        hcm = hcm_pb2.HttpConnectionManager()
        f.typed_config.Unpack(hcm)
        hcm.access_log.extend(access_logs(backends, ctx, http=True))
        f.typed_config.CopyFrom(pack(hcm))
        return True
    if f.name == TCP_PROXY:
        proxy = tcp_proxy_pb2.TcpProxy()
        f.typed_config.Unpack(proxy)
        proxy.access_log.extend(access_logs(backends, ctx, http=False))
        f.typed_config.CopyFrom(pack(proxy))
        return True
    return False


def _add_to_chain(chain: lc.FilterChain, ctx: LogContext, backends: Sequence[Backend]) -> None:
    for f in chain.filters:
        if add_to_filter(f, ctx, backends):
            return


def _identity(dp: Dataplane) -> tuple[str, str]:
    """The proxy's own service (its first inbound's, as Kuma identifies a dataplane) and zone."""
    for ib in dp.networking.inbound:
        if ib.service:
            return ib.service, ib.tags.get(ZONE_TAG, "")
    return UNKNOWN_SOURCE, ""


def _capture(rs: ResourceSet, capture: Entry, rules: AccessLogRules, context: Callable[[str], LogContext],
             note: Callable[[Sequence[Backend]], Sequence[Backend]]) -> None:
    """The transparent proxy's outbound capture listener (shared between proxies until edited): its per-destination
    chains, and the passthrough default chain that only Mesh entries cover."""
    plan: list[tuple[int, str, Sequence[Backend]]] = []  # (chain index or -1 for the default chain, service, ...)
    for index, chain in enumerate(capture.message.filter_chains):  # type: ignore[attr-defined]
        # outbound:<service>:<port>, the capture listener's per-destination chains (names.outbound_chain)
        service = chain.name[len("outbound:"):].rsplit(":", 1)[0] if chain.name.startswith("outbound:") else ""
        backends = rules.outbound(service) if service else None
        if backends:
            plan.append((index, service, backends))
    external = rules.outbound(None)
    if external and capture.message.HasField("default_filter_chain"):  # type: ignore[attr-defined]
        plan.append((-1, EXTERNAL, external))
    if external:  # MeshPassthrough's chains (Matched mode): traffic leaving the mesh, like the default chain
        chains = capture.message.filter_chains  # type: ignore[attr-defined]
        plan.extend((index, EXTERNAL, external) for index, chain in enumerate(chains)
                    if chain.name.startswith(names.PASSTHROUGH_CHAIN_PREFIX))
    if not plan:
        return
    listener = rs.edit(capture)
    for index, service, backends in plan:
        chain = listener.default_filter_chain if index < 0 else listener.filter_chains[index]  # type: ignore
        _add_to_chain(chain, context(service), note(backends))


def configure(rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: AccessLogRules) -> None:
    mesh, ip = ctx.mesh.name, dp.networking.address
    source, zone = _identity(dp)
    endpoints: set[str] = set()

    def note(backends: Sequence[Backend]) -> Sequence[Backend]:
        endpoints.update(b.open_telemetry.endpoint for b in backends
                         if b.type == OTEL and b.open_telemetry is not None and b.open_telemetry.endpoint)
        return backends

    # Inbound: each inbound's own listener, or its chain of the transparent-proxy capture listener.
    inbounds = {inbound_key(dp, ib): ib for ib in dp.networking.inbound}
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        backends, ib = rules.inbounds.get(key), inbounds.get(key)
        if backends and ib is not None:
            log_ctx = LogContext(mesh, UNKNOWN_SOURCE, ib.tags.get(SERVICE_TAG, ""), ip, INBOUND, zone, dp.name)
            _add_to_chain(rs.edit(entry).filter_chains[index], log_ctx, note(backends))  # type: ignore[attr-defined]
    if rules.to:
        for entry in list(rs.entries(LISTENER, Origin.OUTBOUND)):
            backends = rules.outbound(entry.service) if entry.service else None
            if backends:
                log_ctx = LogContext(mesh, source, entry.service, ip, OUTBOUND, zone, dp.name)
                for chain in rs.edit(entry).filter_chains:  # type: ignore[attr-defined]
                    _add_to_chain(chain, log_ctx, note(backends))
        capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
        if capture is not None:
            _capture(rs, capture, rules, lambda service: LogContext(mesh, source, service, ip, OUTBOUND, zone,
                                                                    dp.name), note)
    for endpoint in sorted(endpoints):
        name = otel_cluster_name(endpoint)
        if rs.get(CLUSTER, name) is None:
            rs.add(CLUSTER, name, otel_cluster(endpoint), Origin.OUTBOUND)
