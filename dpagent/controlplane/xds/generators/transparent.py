"""Transparent proxy, per proxy: the two capture listeners iptables redirects to (outbound 15001 → mesh services by
VIP or endpoint IP, else passthrough; inbound 15006 → each inbound's mTLS/RBAC chain, else passthrough) and the
ORIGINAL_DST passthrough clusters. The caller decides sharing; everything here is pure and sorted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.generators.inbound import InboundPart
from dpagent.controlplane.xds.generators.outbound import outbound_filter
from dpagent.model.dataplane import Dataplane
from dpagent.model.validation import is_ip

VIP_PORT = 80  # a VIP answers on 80 as well as on the service's own ports, so `http://backend.mesh` just works


def is_transparent(dp: Dataplane) -> bool:
    return dp.networking.transparent_proxying is not None


def captures_ipv6(dp: Dataplane) -> bool:
    """Whether the capture listeners also listen on [::] (ip6tables redirects there). As in Kuma, dual stack unless
    `transparentProxying.ipFamilyMode` says IPv4: an unset mode must not leave IPv6 connections with no listener."""
    tp = dp.networking.transparent_proxying
    return tp is not None and tp.ip_family_mode.lower() != "ipv4"


def service_addresses(dataplanes: Sequence[Dataplane]) -> dict[str, list[tuple[str, int]]]:
    """Every inbound address:port per service, ready or not: a raw-IP call to any of them is a call to the service
    and should go over mTLS to a serving endpoint rather than in plaintext (and be refused) or to a dead one."""
    out: dict[str, set[tuple[str, int]]] = {}
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            address = ib.address or dp.networking.address
            if ib.service and is_ip(address):
                out.setdefault(ib.service, set()).add((address, ib.port))
    return {s: sorted(eps) for s, eps in sorted(out.items())}


def service_ports(dataplanes: Sequence[Dataplane]) -> dict[str, list[int]]:
    """Every inbound port per service: the ports its VIP answers on (besides 80)."""
    out: dict[str, set[int]] = {}
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            if ib.service:
                out.setdefault(ib.service, set()).add(ib.port)
    return {s: sorted(ports) for s, ports in sorted(out.items())}


def reachable_services(dp: Dataplane, known: Iterable[str]) -> list[str]:
    """The mesh services this proxy gets chains, clusters and DNS names for: what `reachableServices` and
    `reachableBackends` list when either is set (only those that exist), else all of them. A non-tproxy proxy
    reaches what its `outbound` entries name."""
    tp = dp.networking.transparent_proxying
    if tp is None:
        return sorted({ob.service for ob in dp.networking.outbound if ob.service})
    limited = tp.reachable_mesh_services()
    if limited is not None:
        return sorted(set(limited) & set(known))
    return sorted(set(known))


def _claims(reachable: Sequence[str], vips: Mapping[str, str], addresses: Mapping[str, Sequence[tuple[str, int]]],
            ports: Mapping[str, Sequence[int]]) -> dict[tuple[str, int], list[str]]:
    """(service, port) → destination IPs. Each ip:port goes to one service only (the first in sorted order): Envoy
    rejects two chains with the same match."""
    owner: dict[tuple[str, int], str] = {}
    for service in sorted(reachable):
        pairs: set[tuple[str, int]] = set(addresses.get(service, ()))
        if service in vips:
            pairs |= {(vips[service], p) for p in {VIP_PORT, *ports.get(service, ())}}
        for pair in sorted(pairs):
            owner.setdefault(pair, service)
    out: dict[tuple[str, int], list[str]] = {}
    for (ip, port), service in owner.items():
        out.setdefault((service, port), []).append(ip)
    return {k: sorted(ips) for k, ips in sorted(out.items())}


def outbound_capture_listener(port: int, reachable: Sequence[str], protocols: Mapping[str, str],
                              vips: Mapping[str, str], addresses: Mapping[str, Sequence[tuple[str, int]]],
                              ports: Mapping[str, Sequence[int]], *, ipv6: bool = False) -> listener_pb2.Listener:
    """`outbound:passthrough` on 0.0.0.0:`port` (and [::] with `ipv6`): one chain per (service, port) matching the
    original destination (its VIP, its endpoints' IPs, of either family) → the shared service cluster (mTLS when the
    mesh has it); the rest passes through. Identical for every proxy with the same reachable set and family mode, so
    callers may build it once."""
    chains: list[listener_components_pb2.FilterChain] = []
    for (service, dport), ips in _claims(reachable, vips, addresses, ports).items():
        name = names.outbound_chain(service, dport)
        chains.append(lb.filter_chain([outbound_filter(name, service, protocols)], name=name, destination_port=dport,
                                      prefixes=ips))
    default = lb.filter_chain([lb.tcp_proxy(names.stat_prefix(names.OUTBOUND_PASSTHROUGH),
                                            names.OUTBOUND_PASSTHROUGH)], name=names.OUTBOUND_PASSTHROUGH)
    return lb.capture_listener(names.OUTBOUND_PASSTHROUGH, port, lb.OUTBOUND, chains, default, ipv6=ipv6)


def inbound_capture_listener(port: int, parts: Sequence[InboundPart], *, ipv6: bool = False
                             ) -> listener_pb2.Listener:
    """`inbound:passthrough` on 0.0.0.0:`port` (and [::] with `ipv6`): one chain per inbound port carrying what that
    inbound's own listener would (mTLS requiring a client cert, RBAC, HCM/tcp_proxy); any other port passes through
    to the app. A chain matches the port only, not the address: a mesh port reached via another local address (or
    family) must not skip mTLS and RBAC."""
    chains: dict[int, listener_components_pb2.FilterChain] = {}
    for part in parts:
        if part.port not in chains:
            chains[part.port] = lb.filter_chain(part.filters, part.tls, name=part.name, destination_port=part.port)
    default = lb.filter_chain([lb.tcp_proxy(names.stat_prefix(names.INBOUND_PASSTHROUGH),
                                            names.INBOUND_PASSTHROUGH)], name=names.INBOUND_PASSTHROUGH)
    return lb.capture_listener(names.INBOUND_PASSTHROUGH, port, lb.INBOUND,
                               [c for _, c in sorted(chains.items())], default, ipv6=ipv6)


def passthrough_clusters() -> dict[str, cluster_pb2.Cluster]:
    """Both ORIGINAL_DST clusters; the inbound one binds to 127.0.0.6 (::6 when the original destination is IPv6)
    so the iptables rules do not capture it again. The same bytes with or without IPv6 capture: the ::6 source is
    only ever picked for an IPv6 destination."""
    return {
        names.INBOUND_PASSTHROUGH: cb.original_dst_cluster(
            names.INBOUND_PASSTHROUGH, bind_source=names.INBOUND_PASSTHROUGH_SOURCE_V4,
            bind_source_v6=names.INBOUND_PASSTHROUGH_SOURCE_V6),
        names.OUTBOUND_PASSTHROUGH: cb.original_dst_cluster(names.OUTBOUND_PASSTHROUGH),
    }


def transparent_warnings(dp: Dataplane) -> list[str]:
    """What a tproxy Dataplane declares that generation ignores, for `inspect`."""
    out: list[str] = []
    if is_transparent(dp) and dp.networking.outbound:
        out.append(f"networking.outbound: {len(dp.networking.outbound)} outbound(s) ignored: with "
                   "transparentProxying services are reached by VIP or address (as in Kuma, which rejects them)")
    if is_transparent(dp):
        seen: dict[int, int] = {}
        for i, ib in enumerate(dp.networking.inbound):
            if ib.port in seen:
                out.append(f"networking.inbound[{i}].port: port {ib.port} is already served by "
                           f"networking.inbound[{seen[ib.port]}]; the capture listener matches ports only, so this "
                           "inbound is ignored")
            seen.setdefault(ib.port, i)
    return out
