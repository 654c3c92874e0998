"""MeshFaultInjection → one `envoy.filters.http.fault` filter per fault, placed just before the router of each HTTP
inbound's connection manager, so RBAC (MeshTrafficPermission) still refuses a peer before any fault is injected.
TCP inbounds get nothing: a fault needs HTTP requests to act on."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.policies.meshfaultinjection.api import Fault, kbps
from dpagent.controlplane.policies.meshfaultinjection.plugin import InboundFaults
from dpagent.controlplane.policies.meshhttproute.routes import fraction
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.builders.listener import http_filter_names, insert_http_filters
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER
from dpagent.durations import parse_duration

FILTER_PREFIX = "dpagent.mfi."
FAULT_TYPE = "envoy.filters.http.fault"


def http_fault(f: Fault) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if f.abort is not None:
        out.abort.http_status = f.abort.http_status
        out.abort.percentage.CopyFrom(fraction(f.abort.percentage))
    if f.delay is not None:
        out.delay.fixed_delay.CopyFrom(seconds(parse_duration(f.delay.value)))
        out.delay.percentage.CopyFrom(fraction(f.delay.percentage))
    if f.response_bandwidth is not None:
        out.response_rate_limit.CopyFrom(common_pb2.FaultRateLimit(
            fixed_limit=common_pb2.FaultRateLimit.FixedLimit(limit_kbps=kbps(f.response_bandwidth.limit)),
            percentage=fraction(f.response_bandwidth.percentage)))
    return out


def configure(rs: ResourceSet, inbounds: Mapping[str, InboundFaults]) -> None:
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        faults = inbounds.get(key)
        if faults is None:
            continue
        chain = rs.edit(entry).filter_chains[index]  # type: ignore[attr-defined]
        if any(n == FAULT_TYPE or n.startswith(FILTER_PREFIX) for n in http_filter_names(chain)):
            continue  # someone already configured faults here (Kuma leaves a legacy fault filter alone too)
        insert_http_filters(chain, [hcm_pb2.HttpFilter(name=f"{FILTER_PREFIX}{i}", typed_config=pack(http_fault(f)))
                                    for i, f in enumerate(faults.faults)])
