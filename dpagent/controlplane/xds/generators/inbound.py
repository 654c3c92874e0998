"""Inbound side, per proxy: what each inbound needs (mTLS when the mesh has it, the local cluster that reaches the
workload behind it, an RDS route for HTTP), and one listener per inbound when there is no transparent proxy
(generators/transparent.py turns the same parts into chains of the capture listener)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import inbound_key
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.permissive import make_permissive
from dpagent.controlplane.xds.builders.tls import downstream_tls
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE, Resource
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import mtls_enabled, mtls_permissive
from dpagent.model.validation import is_ip

if TYPE_CHECKING:
    from dpagent.controlplane.xds.context import Proxy

DEFAULT_SERVICE_ADDRESS = "127.0.0.1"


def _filters(ib_protocol: str, listener_name: str, route: str, cluster: str) -> list[listener_components_pb2.Filter]:
    """HTTP inbounds read their route over RDS, so policies that edit routes (RBAC) reach live connections."""
    stat = names.stat_prefix(listener_name)
    if ib_protocol in lb.HTTP_PROTOCOLS:
        return [lb.http_connection_manager(stat, route, cluster, forward_identity=True, rds=True)]
    return [lb.tcp_proxy(stat, cluster)]


@dataclass(frozen=True)
class InboundPart:
    """What serving one inbound takes, whether it becomes its own listener or a chain of the capture listener."""

    name: str  # inbound:<address>:<port>, also the name of its filter chain
    key: str  # <address>:<port>, how policies name the inbound
    address: str
    port: int
    cluster: Resource  # shared by proxies whose apps listen on the same local address and port
    filters: list[listener_components_pb2.Filter]
    tls: base_pb2.TransportSocket | None
    route: route_pb2.RouteConfiguration | None  # HTTP inbounds only


def passthrough_source(app_address: str) -> str:
    """The source Envoy binds to when it connects to the app under a transparent proxy (::6 for IPv6 apps)."""
    v6 = is_ip(app_address) and ipaddress.ip_address(app_address).version == 6
    return names.INBOUND_PASSTHROUGH_SOURCE_V6 if v6 else names.INBOUND_PASSTHROUGH_SOURCE_V4


def inbound_parts(ctx: MeshView, dp: Dataplane, *, transparent: bool = False) -> list[InboundPart]:
    """One part per inbound of `dp`, in declaration order; mTLS (any identity of the mesh) when the mesh has it.
    Which peers may call is MeshTrafficPermission's job, applied later by its plugin.
    `transparent`: the app cluster binds to the passthrough source."""
    mesh = ctx.mesh.name
    mtls = mtls_enabled(ctx.mesh)
    out: list[InboundPart] = []
    for ib in dp.networking.inbound:
        address = ib.address or dp.networking.address
        name = names.inbound_listener(address, ib.port)
        local_address = ib.service_address or DEFAULT_SERVICE_ADDRESS
        cluster_name = names.local_cluster(local_address, ib.workload_port)
        http2, source = ib.protocol in lb.HTTP2_PROTOCOLS, passthrough_source(local_address) if transparent else ""
        # Shared: proxies whose apps listen on the same local address and port get the same cluster bytes, and
        # plugins memoise their edits of it the same way (cluster_edit).
        cluster = ctx.dp_shared((CLUSTER, cluster_name, local_address, ib.workload_port, http2, source), CLUSTER,
                                cluster_name, lambda n=cluster_name, a=local_address, p=ib.workload_port, h=http2,
                                s=source: cb.static_cluster(n, a, p, http2=h, bind_source=s))
        route_name = names.inbound_route(address, ib.port)
        route = lb.route_config(route_name, cluster_name) if ib.protocol in lb.HTTP_PROTOCOLS else None
        out.append(InboundPart(name, inbound_key(dp, ib), address, ib.port, cluster,
                               _filters(ib.protocol, name, route_name, cluster_name),
                               ctx.dp_memo(("downstream-tls", mesh), lambda: downstream_tls(mesh)) if mtls else None,
                               route))
    return out


class InboundGenerator:
    """Each inbound's local cluster and (HTTP) route configuration; its own listener unless a transparent proxy
    captures inbound traffic (then generators/transparent.py puts the same filters in the capture listener)."""

    def generate(self, rs: ResourceSet, ctx: MeshView, proxy: Proxy) -> None:
        dp = proxy.dp
        transparent = dp.networking.transparent_proxying is not None
        permissive = mtls_permissive(ctx.mesh)
        for part in inbound_parts(ctx, dp, transparent=transparent):
            # First one wins on a clash: two inbounds may share a workload port (one cluster), and a duplicate
            # address:port is reported by validation / transparent_warnings rather than failing generation.
            if rs.get(CLUSTER, part.cluster.name) is None:
                rs.add(CLUSTER, part.cluster.name, part.cluster, Origin.INBOUND, inbound=part.key)
            if part.route is not None and rs.get(ROUTE, part.route.name) is None:
                rs.add(ROUTE, part.route.name, part.route, Origin.INBOUND, inbound=part.key)
            if not transparent and rs.get(LISTENER, part.name) is None:
                chain = lb.filter_chain(part.filters, part.tls, name=part.name)
                listener = lb.listener_with_chains(part.name, part.address, part.port, lb.INBOUND, [chain])
                chains = {part.name: part.key}
                if permissive:
                    chains.update({plain: part.key for plain in make_permissive(listener, {part.name})})
                rs.add(LISTENER, part.name, listener, Origin.INBOUND, inbound=part.key, chains=chains)
