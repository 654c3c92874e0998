"""Inbound side, per proxy: what each inbound needs (mTLS + MeshTrafficPermission RBAC when the mesh has mTLS, the
local cluster that reaches the workload behind it), and one listener per inbound when there is no transparent proxy
(generators/transparent.py turns the same parts into chains of the capture listener)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshtrafficpermission.plugin import InboundPermissions, MtpRules, inbound_key
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders import rbac
from dpagent.controlplane.xds.builders.tls import downstream_tls
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import mtls_enabled
from dpagent.model.validation import is_ip

DEFAULT_SERVICE_ADDRESS = "127.0.0.1"


def _filters(mesh: str, ib_protocol: str, service: str, listener_name: str, cluster: str,
             perm: InboundPermissions | None) -> list[listener_components_pb2.Filter]:
    stat = names.stat_prefix(listener_name)
    rules = shadow = None
    if perm is not None:
        rules = rbac.rbac_rules(mesh, *perm.rbac())
        shadow = rbac.rbac_rules(mesh, *perm.rbac(shadow=True)) if perm.has_shadow() else None
    if ib_protocol in lb.HTTP_PROTOCOLS:
        http_filters = [rbac.http_rbac(rules, shadow)] if rules is not None else []
        return [lb.http_connection_manager(stat, names.inbound_route(service), cluster, http_filters,
                                           forward_identity=True)]
    pre = [rbac.network_rbac(stat, rules, shadow)] if rules is not None else []
    return [*pre, lb.tcp_proxy(stat, cluster)]


@dataclass(frozen=True)
class InboundPart:
    """What serving one inbound takes, whether it becomes its own listener or a chain of the capture listener."""

    name: str  # inbound:<address>:<port>
    address: str
    port: int
    cluster: cluster_pb2.Cluster
    filters: list[listener_components_pb2.Filter]
    tls: base_pb2.TransportSocket | None


def passthrough_source(app_address: str) -> str:
    """The source Envoy binds to when it connects to the app under a transparent proxy (::6 for IPv6 apps)."""
    v6 = is_ip(app_address) and ipaddress.ip_address(app_address).version == 6
    return names.INBOUND_PASSTHROUGH_SOURCE_V6 if v6 else names.INBOUND_PASSTHROUGH_SOURCE_V4


def inbound_parts(ctx: MeshView, dp: Dataplane, mtp: MtpRules, *, transparent: bool = False) -> list[InboundPart]:
    """One part per inbound of `dp`, in declaration order.

    With mTLS on and no rule for an inbound, the RBAC filter is still emitted with no allowed peer: deny by
    default, as Kuma does once mTLS is enabled. `transparent`: the app cluster binds to the passthrough source.
    """
    mesh = ctx.mesh.name
    mtls = mtls_enabled(ctx.mesh)
    out: list[InboundPart] = []
    for ib in dp.networking.inbound:
        address = ib.address or dp.networking.address
        name = names.inbound_listener(address, ib.port)
        local_address = ib.service_address or DEFAULT_SERVICE_ADDRESS
        cluster_name = names.local_cluster(local_address, ib.workload_port)
        cluster = cb.static_cluster(cluster_name, local_address, ib.workload_port,
                                    http2=ib.protocol in lb.HTTP2_PROTOCOLS,
                                    bind_source=passthrough_source(local_address) if transparent else "")
        perm = (mtp.for_inbound(inbound_key(dp, ib)) or InboundPermissions()) if mtls else None
        filters = _filters(mesh, ib.protocol, ib.service, name, cluster_name, perm)
        out.append(InboundPart(name, address, ib.port, cluster, filters, downstream_tls(mesh) if mtls else None))
    return out


def inbound_resources(ctx: MeshView, dp: Dataplane, mtp: MtpRules) -> tuple[dict[str, listener_pb2.Listener],
                                                                            dict[str, cluster_pb2.Cluster]]:
    """Listeners and local clusters for every inbound of `dp` (no transparent proxy), keyed and sorted by name."""
    listeners: dict[str, listener_pb2.Listener] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for part in inbound_parts(ctx, dp, mtp):
        clusters[part.cluster.name] = part.cluster
        listeners[part.name] = lb.listener(part.name, part.address, part.port, lb.INBOUND, part.filters, part.tls)
    return dict(sorted(listeners.items())), dict(sorted(clusters.items()))
