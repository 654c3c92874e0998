"""Direct access (`transparentProxying.directAccessServices`): traffic the app sends to a peer's own ip:port reaches
exactly that endpoint, over mTLS when the mesh has it, instead of being balanced over the whole service.

Kuma's layout: one listener per endpoint (`direct_access_<ip>:<port>`, not bound: the outbound capture listener hands
the connection over by its original destination, `use_original_dst`) with a tcp_proxy to one ORIGINAL_DST cluster,
`direct_access`. With mTLS that cluster presents the proxy's identity and accepts any identity of the mesh: the
peer's inbound applies MeshTrafficPermission as for any caller. The listed services (or `*` for all) are matched on
the other dataplanes' inbound `kuma.io/service`; the proxy's own endpoints are left out. One listener per endpoint
makes the config grow with the mesh, which is why Kuma (and we) do it only for the services asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.tls import upstream_tls_any
from dpagent.controlplane.xds.context import MeshContext, Proxy
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import client_mtls
from dpagent.model.validation import is_ip

ALL = "*"


def direct_access_endpoints(dp: Dataplane, dataplanes: Sequence[Dataplane]) -> list[tuple[str, int]]:
    """(ip, port) of every other dataplane's inbound whose service `dp` lists for direct access, sorted."""
    return _others(_endpoints(_wanted(dp), dataplanes), dp.name)


def _wanted(dp: Dataplane) -> frozenset[str]:
    tp = dp.networking.transparent_proxying
    return frozenset(tp.direct_access_services) if tp is not None else frozenset()


def _endpoints(wanted: frozenset[str], dataplanes: Sequence[Dataplane]) -> list[tuple[str, int, frozenset[str]]]:
    """(ip, port, dataplanes serving it) of the inbounds of the `wanted` services, sorted."""
    if not wanted:
        return []
    out: dict[tuple[str, int], set[str]] = {}
    for other in dataplanes:
        for ib in other.networking.inbound:
            address = ib.address or other.networking.address
            if ib.service and (ALL in wanted or ib.service in wanted) and is_ip(address):
                out.setdefault((address, ib.port), set()).add(other.name)
    return [(ip, port, frozenset(owners)) for (ip, port), owners in sorted(out.items())]


def _others(endpoints: list[tuple[str, int, frozenset[str]]], name: str) -> list[tuple[str, int]]:
    """The endpoints some other dataplane serves: a proxy gets no direct-access listener for its own inbounds."""
    return [(ip, port) for ip, port, owners in endpoints if owners - {name}]


def direct_access_listener(address: str, port: int) -> listener_pb2.Listener:
    name = names.direct_access_listener(address, port)
    listener = lb.listener(name, address, port, lb.OUTBOUND,
                           [lb.tcp_proxy(names.stat_prefix(name), names.DIRECT_ACCESS_CLUSTER)])
    listener.bind_to_port.value = False
    return listener


def direct_access_cluster(mesh: str, mtls: bool) -> cluster_pb2.Cluster:
    cluster = cb.original_dst_cluster(names.DIRECT_ACCESS_CLUSTER)
    if mtls:
        cluster.transport_socket.CopyFrom(upstream_tls_any(mesh))
    return cluster


class DirectAccessGenerator:
    """The direct-access listeners and cluster of a transparent proxy that lists `directAccessServices`, and the
    hand-over flag on its outbound capture listener (shared by every such proxy with the same reachable set)."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        tp = proxy.dp.networking.transparent_proxying
        if tp is None or not tp.direct_access_services:
            return
        # Once per distinct list in the mesh, not once per proxy: with `*` on every proxy that walk was N².
        everyone = ctx.dp_memo(("direct-access", _wanted(proxy.dp)),
                               lambda: _endpoints(_wanted(proxy.dp), ctx.dataplanes))
        endpoints = _others(everyone, proxy.dp.name)
        if not endpoints:
            return
        for address, port in endpoints:
            name = names.direct_access_listener(address, port)
            rs.add(LISTENER, name, ctx.dp_shared((LISTENER, name), LISTENER, name,
                                                 lambda a=address, p=port: direct_access_listener(a, p)),
                   Origin.DIRECT_ACCESS)
        mtls = client_mtls(ctx.mesh)
        rs.add(CLUSTER, names.DIRECT_ACCESS_CLUSTER,
               ctx.dp_shared((CLUSTER, names.DIRECT_ACCESS_CLUSTER, mtls), CLUSTER, names.DIRECT_ACCESS_CLUSTER,
                             lambda: direct_access_cluster(ctx.mesh.name, mtls)), Origin.DIRECT_ACCESS)
        capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
        if capture is not None and capture.shared is not None:
            base = capture.message

            def handing_over() -> listener_pb2.Listener:
                copy = listener_pb2.Listener()
                copy.CopyFrom(base)
                copy.use_original_dst.value = True
                return copy

            key = (names.OUTBOUND_PASSTHROUGH, "use_original_dst", capture.shared.digest)
            rs.replace(capture, ctx.dp_shared(key,
                                              LISTENER, names.OUTBOUND_PASSTHROUGH, handing_over))
        elif capture is not None:
            rs.edit(capture).use_original_dst.value = True  # type: ignore[attr-defined]
