"""MeshCircuitBreaker → Envoy cluster fields: `circuit_breakers` (DEFAULT priority, always `track_remaining`),
`outlier_detection` with every detector the conf does not name switched off (Envoy would otherwise enforce
consecutive 5xx by default), and the healthy panic threshold.

Outbound clusters stay shared per effective conf (cluster_edit.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.cluster_edit import edit_outbound_clusters
from dpagent.controlplane.policies.meshcircuitbreaker.api import KIND, decimal
from dpagent.controlplane.policies.meshcircuitbreaker.plugin import McbRules
from dpagent.controlplane.xds.builders.core import seconds
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.durations import parse_duration

_LIMITS = {"maxConnections": "max_connections", "maxConnectionPools": "max_connection_pools",
           "maxPendingRequests": "max_pending_requests", "maxRequests": "max_requests", "maxRetries": "max_retries"}
_CONSECUTIVE = {"totalFailures": "consecutive_5xx", "gatewayFailures": "consecutive_gateway_failure",
                "localOriginFailures": "consecutive_local_origin_failure"}


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def outlier_detection(od: Mapping[str, Any]) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection()
    if od.get("interval") is not None:
        out.interval.CopyFrom(seconds(parse_duration(od["interval"])))
    if od.get("baseEjectionTime") is not None:
        out.base_ejection_time.CopyFrom(seconds(parse_duration(od["baseEjectionTime"])))
    if od.get("maxEjectionPercent") is not None:
        out.max_ejection_percent.CopyFrom(_u32(od["maxEjectionPercent"]))
    if od.get("splitExternalAndLocalErrors") is not None:
        out.split_external_local_origin_errors = od["splitExternalAndLocalErrors"]
    det = od.get("detectors") or {}
    for key, field in _CONSECUTIVE.items():
        count = (det.get(key) or {}).get("consecutive")
        if count is not None:
            getattr(out, field).CopyFrom(_u32(count))
        getattr(out, f"enforcing_{field}").CopyFrom(_u32(100 if key in det else 0))
    sr = det.get("successRate")
    if sr is not None:
        if sr.get("minimumHosts") is not None:
            out.success_rate_minimum_hosts.CopyFrom(_u32(sr["minimumHosts"]))
        if sr.get("requestVolume") is not None:
            out.success_rate_request_volume.CopyFrom(_u32(sr["requestVolume"]))
        factor = decimal(sr.get("standardDeviationFactor"))
        if factor is not None:
            out.success_rate_stdev_factor.CopyFrom(_u32(int(factor * 1000)))
    out.enforcing_success_rate.CopyFrom(_u32(100 if sr is not None else 0))
    out.enforcing_local_origin_success_rate.CopyFrom(_u32(100 if sr is not None else 0))
    fp = det.get("failurePercentage")
    if fp is not None:
        for key, field in (("minimumHosts", "failure_percentage_minimum_hosts"),
                           ("requestVolume", "failure_percentage_request_volume"),
                           ("threshold", "failure_percentage_threshold")):
            if fp.get(key) is not None:
                getattr(out, field).CopyFrom(_u32(fp[key]))
    out.enforcing_failure_percentage.CopyFrom(_u32(100 if fp is not None else 0))
    out.enforcing_failure_percentage_local_origin.CopyFrom(_u32(100 if fp is not None else 0))
    return out


def apply_conf(cluster: cluster_pb2.Cluster, conf: Mapping[str, Any]) -> None:
    """Write one effective conf onto `cluster` (in place)."""
    limits = conf.get("connectionLimits") or {}
    threshold = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.RoutingPriority.DEFAULT,
                                                               track_remaining=True)
    for key, field in _LIMITS.items():
        if limits.get(key) is not None:
            getattr(threshold, field).CopyFrom(_u32(limits[key]))
    del cluster.circuit_breakers.thresholds[:]
    cluster.circuit_breakers.thresholds.append(threshold)
    od = conf.get("outlierDetection")
    if od is None or od.get("disabled"):
        return
    cluster.outlier_detection.CopyFrom(outlier_detection(od))
    panic = decimal(od.get("healthyPanicThreshold"))
    if panic is not None:
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=float(panic)))


def configure(rs: ResourceSet, ctx: MeshView, rules: McbRules) -> None:
    def plan(entry: Entry) -> tuple[str, Callable[[cluster_pb2.Cluster], None]] | None:
        keyed = rules.keyed(entry.service) if entry.service else None
        if keyed is None:
            return None
        key, conf = keyed
        return key, lambda cluster: apply_conf(cluster, conf)

    edit_outbound_clusters(rs, ctx, KIND, plan)

    def plan_inbound(entry: Entry) -> tuple[str, Callable[[cluster_pb2.Cluster], None]] | None:
        conf = rules.inbounds.get(entry.inbound)
        if not conf:
            return None
        return json.dumps(conf, sort_keys=True), lambda cluster: apply_conf(cluster, conf)

    edit_outbound_clusters(rs, ctx, KIND, plan_inbound, Origin.INBOUND)
