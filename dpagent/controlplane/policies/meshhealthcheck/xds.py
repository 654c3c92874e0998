"""MeshHealthCheck → one `health_checks[]` entry on the destination's outbound clusters (route split clusters
included). The checker follows the destination's protocol: HTTP for http/http2, gRPC for grpc, TCP for tcp, and TCP
as the fallback of a disabled HTTP/gRPC checker; anything else gets no check (Kuma's choice, reference §7).

Checks travel like traffic: to each instance's inbound port over the cluster's mTLS, so the backend's own proxy
forwards them to the application's health path."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, health_check_pb2
from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2
from envoy.type.v3 import http_pb2, percent_pb2, range_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.cluster_edit import edit_outbound_clusters
from dpagent.controlplane.policies.meshcircuitbreaker.api import decimal
from dpagent.controlplane.policies.meshhealthcheck.api import KIND
from dpagent.controlplane.policies.meshhealthcheck.plugin import MhcRules
from dpagent.controlplane.policies.meshroute.xds import protocols
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.resources import Entry, ResourceSet
from dpagent.durations import parse_duration

# Kuma's defaults for the fields Envoy requires
DEFAULTS = {"interval": "1m", "timeout": "15s", "unhealthyThreshold": 5, "healthyThreshold": 1}
HTTP, TCP, GRPC = "http", "tcp", "grpc"
FILE_SINK = "envoy.health_check.event_sinks.file"


def _enabled(conf: Mapping[str, Any], key: str) -> bool:
    section = conf.get(key)
    return isinstance(section, Mapping) and not section.get("disabled", False)


def checker(conf: Mapping[str, Any], protocol: str) -> str | None:
    if protocol in ("http", "http2") and _enabled(conf, HTTP):
        return HTTP
    if protocol == "grpc" and _enabled(conf, GRPC):
        return GRPC
    if protocol in ("tcp", "http", "http2", "grpc") and _enabled(conf, TCP):
        return TCP
    return None


def _headers(raw: Mapping[str, Any]) -> list[base_pb2.HeaderValueOption]:
    out = []
    for key, action in (("set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
                        ("add", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)):
        for item in raw.get(key) or []:
            # one option per comma-separated value, as Kuma does; a `set` replaces with the first and appends the rest
            for i, value in enumerate(str(item["value"]).split(",")):
                out.append(base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=item["name"], value=value.strip()),
                    append_action=action if i == 0 else base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD))
    return out


def health_check(conf: Mapping[str, Any], kind: str, protocol: str) -> health_check_pb2.HealthCheck:
    c = {**DEFAULTS, **conf}
    hc = health_check_pb2.HealthCheck(
        interval=seconds(parse_duration(c["interval"])), timeout=seconds(parse_duration(c["timeout"])),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=c["unhealthyThreshold"]),
        healthy_threshold=wrappers_pb2.UInt32Value(value=c["healthyThreshold"]))
    for key, field in (("initialJitter", "initial_jitter"), ("intervalJitter", "interval_jitter"),
                       ("noTrafficInterval", "no_traffic_interval")):
        if c.get(key) is not None:
            getattr(hc, field).CopyFrom(seconds(parse_duration(c[key])))
    if c.get("intervalJitterPercent") is not None:
        hc.interval_jitter_percent = c["intervalJitterPercent"]
    if c.get("alwaysLogHealthCheckFailures") is not None:
        hc.always_log_health_check_failures = c["alwaysLogHealthCheckFailures"]
    if c.get("reuseConnection") is not None:
        hc.reuse_connection.value = c["reuseConnection"]
    if c.get("eventLogPath"):
        hc.event_logger.append(extension_pb2.TypedExtensionConfig(
            name=FILE_SINK, typed_config=pack(file_pb2.HealthCheckEventFileSink(event_log_path=c["eventLogPath"]))))
    if kind == HTTP:
        http = c[HTTP]
        hc.http_health_check.CopyFrom(health_check_pb2.HealthCheck.HttpHealthCheck(
            path=http.get("path") or "/", request_headers_to_add=_headers(http.get("requestHeadersToAdd") or {}),
            expected_statuses=[range_pb2.Int64Range(start=s, end=s + 1) for s in http.get("expectedStatuses") or []],
            codec_client_type=http_pb2.HTTP2 if protocol == "http2" else http_pb2.HTTP1))
    elif kind == GRPC:
        grpc = c[GRPC]
        hc.grpc_health_check.CopyFrom(health_check_pb2.HealthCheck.GrpcHealthCheck(
            service_name=grpc.get("serviceName") or "", authority=grpc.get("authority") or ""))
    else:
        tcp = c[TCP]
        check = health_check_pb2.HealthCheck.TcpHealthCheck()
        if tcp.get("send"):
            check.send.text = tcp["send"].encode().hex()
        for text in tcp.get("receive") or []:
            check.receive.add(text=text.encode().hex())
        hc.tcp_health_check.CopyFrom(check)
    return hc


def apply_conf(cluster: cluster_pb2.Cluster, conf: Mapping[str, Any], protocol: str) -> None:
    kind = checker(conf, protocol)
    if kind is not None:
        cluster.health_checks.append(health_check(conf, kind, protocol))
    panic = decimal(conf.get("healthyPanicThreshold"))
    if panic is not None:  # deprecated here (MeshCircuitBreaker owns it and runs later) but still honoured
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=float(panic)))
    if conf.get("failTrafficOnPanic") is not None:
        cluster.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic = conf["failTrafficOnPanic"]


def configure(rs: ResourceSet, ctx: MeshView, rules: MhcRules) -> None:
    kinds = protocols(ctx)

    def plan(entry: Entry) -> tuple[str, Callable[[cluster_pb2.Cluster], None]] | None:
        conf = rules.for_service(entry.service) if entry.service else {}
        if not conf:
            return None
        protocol = kinds.get(entry.service, "tcp")
        return (json.dumps(conf, sort_keys=True) + protocol,
                lambda cluster: apply_conf(cluster, conf, protocol))

    edit_outbound_clusters(rs, ctx, KIND, plan)
