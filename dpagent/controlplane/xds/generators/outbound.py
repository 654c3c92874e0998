"""Outbound side: the mesh-wide service clusters and endpoints (shared by every proxy) and each proxy's outbound
listeners that point at them by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.tls import upstream_tls
from dpagent.model.dataplane import Dataplane, Inbound
from dpagent.model.mesh import client_mtls
from dpagent.model.validation import is_ip

_NOT_SERVING = ("NotReady", "Ignored")


def service_protocols(dataplanes: Sequence[Dataplane]) -> dict[str, str]:
    """One protocol per service: the common one, `http` when HTTP flavours mix, else `tcp` (the safe floor)."""
    seen: dict[str, set[str]] = {}
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            if ib.service:
                seen.setdefault(ib.service, set()).add(ib.protocol)
    out: dict[str, str] = {}
    for service, protos in seen.items():
        if len(protos) == 1:
            out[service] = next(iter(protos))
        elif protos <= set(lb.HTTP_PROTOCOLS) and "grpc" not in protos:
            out[service] = "http"
        else:
            out[service] = "tcp"
    return dict(sorted(out.items()))


def serving(ib: Inbound) -> bool:
    return not (ib.health is not None and not ib.health.ready) and ib.state not in _NOT_SERVING


def service_endpoints(dataplanes: Sequence[Dataplane]) -> dict[str, list[tuple[str, int]]]:
    """Ready inbounds per service. Hostname addresses are skipped: EDS needs IPs, and resolving is the store's job."""
    out: dict[str, set[tuple[str, int]]] = {}
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            if not ib.service:
                continue
            eps = out.setdefault(ib.service, set())
            address = ib.address or dp.networking.address
            if serving(ib) and is_ip(address):
                eps.add((address, ib.port))
    return {s: sorted(eps) for s, eps in sorted(out.items())}


Clusters = dict[str, cluster_pb2.Cluster]
Assignments = dict[str, endpoint_pb2.ClusterLoadAssignment]
Routes = dict[str, route_pb2.RouteConfiguration]


def shared_clusters(ctx: MeshView) -> tuple[Clusters, Assignments, Routes]:
    """Every service's cluster and endpoints, and for HTTP services the route-free RouteConfiguration the outbound
    HCMs read over RDS (a MeshHTTPRoute swaps in its own, the listeners stay as they are)."""
    mtls = client_mtls(ctx.mesh)
    protocols = service_protocols(ctx.dataplanes)
    clusters: Clusters = {}
    assignments: Assignments = {}
    routes: Routes = {}
    for service, endpoints in service_endpoints(ctx.dataplanes).items():
        name = names.service_cluster(service)
        tls = upstream_tls(ctx.mesh.name, service) if mtls else None
        clusters[name] = cb.eds_cluster(name, http2=protocols[service] in lb.HTTP2_PROTOCOLS, tls=tls)
        assignments[name] = cb.load_assignment(name, endpoints)
        if protocols[service] in lb.HTTP_PROTOCOLS:
            route = names.outbound_route(service)
            routes[route] = lb.route_config(route, name, validate_clusters=False)
    return clusters, assignments, routes


def outbound_filter(name: str, service: str, protocols: Mapping[str, str]) -> Any:
    """The network filter that sends a client's traffic to `service`: HTTP-aware for HTTP protocols, else TCP.
    Shared by outbound listeners and the transparent-proxy capture chains. HTTP reads the service's route over RDS
    (`outbound:<service>`, see shared_clusters), so a route change reaches open connections and never replaces a
    listener."""
    cluster = names.service_cluster(service)
    stat = names.stat_prefix(name)
    if protocols.get(service, "tcp") in lb.HTTP_PROTOCOLS:
        return lb.http_connection_manager(stat, names.outbound_route(service), cluster, rds=True)
    return lb.tcp_proxy(stat, cluster)


def outbound_listeners(ctx: MeshView, dp: Dataplane,
                       protocols: Mapping[str, str] | None = None) -> dict[str, listener_pb2.Listener]:
    """`protocols` is `service_protocols(ctx.dataplanes)`, passed in when the caller computed it once for the mesh:
    recomputing it per proxy walks every dataplane, which made generating a whole mesh quadratic."""
    if protocols is None:
        protocols = service_protocols(ctx.dataplanes)
    out: dict[str, listener_pb2.Listener] = {}
    for ob in dp.networking.outbound:
        name = names.outbound_listener(ob.address, ob.port)
        out[name] = lb.listener(name, ob.address, ob.port, lb.OUTBOUND, [outbound_filter(name, ob.service, protocols)])
    return dict(sorted(out.items()))
