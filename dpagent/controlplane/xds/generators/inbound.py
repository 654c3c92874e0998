"""Inbound side, per proxy: one listener per inbound (mTLS + MeshTrafficPermission RBAC when the mesh has mTLS)
and the local cluster that reaches the workload behind it."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
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
        return [lb.http_connection_manager(stat, names.inbound_route(service), cluster, http_filters)]
    pre = [rbac.network_rbac(stat, rules, shadow)] if rules is not None else []
    return [*pre, lb.tcp_proxy(stat, cluster)]


def inbound_resources(ctx: MeshView, dp: Dataplane, mtp: MtpRules) -> tuple[dict[str, listener_pb2.Listener],
                                                                            dict[str, cluster_pb2.Cluster]]:
    """Listeners and local clusters for every inbound of `dp`, keyed and sorted by name.

    With mTLS on and no rule for an inbound, the RBAC filter is still emitted with no allowed peer: deny by
    default, as Kuma does once mTLS is enabled.
    """
    mesh = ctx.mesh.name
    mtls = mtls_enabled(ctx.mesh)
    listeners: dict[str, listener_pb2.Listener] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for ib in dp.networking.inbound:
        address = ib.address or dp.networking.address
        name = names.inbound_listener(address, ib.port)
        local_address = ib.service_address or DEFAULT_SERVICE_ADDRESS
        cluster = names.local_cluster(local_address, ib.workload_port)
        clusters[cluster] = cb.static_cluster(cluster, local_address, ib.workload_port,
                                              http2=ib.protocol in lb.HTTP2_PROTOCOLS)
        perm = (mtp.for_inbound(inbound_key(dp, ib)) or InboundPermissions()) if mtls else None
        filters = _filters(mesh, ib.protocol, ib.service, name, cluster, perm)
        listeners[name] = lb.listener(name, address, ib.port, lb.INBOUND, filters,
                                      downstream_tls(mesh) if mtls else None)
    return dict(sorted(listeners.items())), dict(sorted(clusters.items()))
