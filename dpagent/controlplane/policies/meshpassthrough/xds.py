"""MeshPassthrough → the transparent proxy's outbound capture listener (`outbound:passthrough`).

All: as generated (the default chain passes everything through). None: the default chain is removed, so a
connection to anything that is not a mesh service or MeshExternalService matches no chain and is closed.
Matched: the default chain is removed and these chains pass through to the ORIGINAL_DST cluster:
- IP/CIDR entries (any protocol): one chain per port with their prefixes;
- Domain entries with `tls`: one chain per port matching the SNI (`server_names`, `*.` wildcards included) behind
  a TLS inspector;
- Domain entries with `http`/`http2`/`grpc`: one plaintext chain per port with an HTTP connection manager whose
  virtual hosts are the domains (port stripped from Host); any other Host gets 404.
An entry without a port gets its chain on every port too that another chain names: Envoy picks chains by
destination port first, so a port-less chain would never see a port that a mesh service's chain claims.
Chains are named `passthrough:<kind>:<port>` (MeshAccessLog logs them as traffic leaving the mesh).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshpassthrough.api import CIDR, DOMAIN, HTTP_KINDS, IP, MATCHED, NONE, Match
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.core import cidr, pack, seconds
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER

CHAIN_PREFIX = names.PASSTHROUGH_CHAIN_PREFIX
HTTP2_CLUSTER = f"{names.OUTBOUND_PASSTHROUGH}:http2"  # ORIGINAL_DST speaking HTTP/2 upstream (grpc, http2)
INSPECT_TIMEOUT = 1.0  # a server-first protocol sends nothing for the TLS inspector to read: do not wait 15 s


def _tcp_chain(name: str, port: int, prefixes: Sequence[str] = (), server_names: Sequence[str] = ()
               ) -> listener_components_pb2.FilterChain:
    chain = lb.filter_chain([lb.tcp_proxy(names.stat_prefix(name), names.OUTBOUND_PASSTHROUGH)], name=name,
                            destination_port=port)
    if prefixes:
        chain.filter_chain_match.prefix_ranges.extend(cidr(p) for p in prefixes)
    if server_names:
        chain.filter_chain_match.server_names.extend(server_names)
        chain.filter_chain_match.transport_protocol = "tls"
    return chain


def _http_chain(name: str, port: int, domains: Sequence[str], protocol: str) -> listener_components_pb2.FilterChain:
    cluster = HTTP2_CLUSTER if protocol in ("http2", "grpc") else names.OUTBOUND_PASSTHROUGH
    route = route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"),
                                       route=route_components_pb2.RouteAction(cluster=cluster))
    vhosts = [route_components_pb2.VirtualHost(name=d, domains=[d], routes=[route]) for d in domains]
    cfg = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.stat_prefix(name), codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        strip_any_host_port=True, route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=vhosts),
        http_filters=[hcm_pb2.HttpFilter(name=lb.ROUTER, typed_config=pack(router_pb2.Router()))])
    chain = lb.filter_chain([listener_components_pb2.Filter(name=lb.HCM, typed_config=pack(cfg))], name=name,
                            destination_port=port)
    chain.filter_chain_match.transport_protocol = "raw_buffer"
    return chain


def chains(matches: Sequence[Match], claimed: dict[int, set[str]]) -> list[listener_components_pb2.FilterChain]:
    """`claimed`: port → exact prefixes (`a.b.c.d/32`) the listener's other chains already match on that port; an
    IP entry equal to one of them is left to that chain (Envoy refuses two chains with the same match)."""
    ports = sorted({m.port for m in matches if m.port} | {p for p in claimed if p})
    ip: dict[int, list[str]] = {}
    tls: dict[int, list[str]] = {}
    http: dict[int, tuple[str, list[str]]] = {}
    for m in matches:
        for port in ([m.port] if m.port else [0, *ports]):
            if m.type in (IP, CIDR):
                prefix = str(ipaddress.ip_network(m.value, strict=False))
                if prefix not in claimed.get(port, set()) and prefix not in ip.setdefault(port, []):
                    ip[port].append(prefix)
            elif m.type == DOMAIN and m.protocol == "tls":
                if m.value not in tls.setdefault(port, []):
                    tls[port].append(m.value)
            elif m.type == DOMAIN and m.protocol in HTTP_KINDS:
                protocol, domains = http.setdefault(port, (m.protocol, []))
                if m.value not in domains and (protocol in ("http2", "grpc")) == (m.protocol in ("http2", "grpc")):
                    domains.append(m.value)
    out: list[listener_components_pb2.FilterChain] = []
    for port, prefixes in sorted(ip.items()):
        if prefixes:
            out.append(_tcp_chain(f"{CHAIN_PREFIX}ip:{port}", port, prefixes=sorted(prefixes)))
    for port, server_names in sorted(tls.items()):
        out.append(_tcp_chain(f"{CHAIN_PREFIX}tls:{port}", port, server_names=sorted(server_names)))
    for port, (protocol, domains) in sorted(http.items()):
        out.append(_http_chain(f"{CHAIN_PREFIX}http:{port}", port, sorted(domains), protocol))
    return out


def _claimed(listener: listener_pb2.Listener) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for chain in listener.filter_chains:
        match = chain.filter_chain_match
        port = match.destination_port.value if match.HasField("destination_port") else 0
        out.setdefault(port, set()).update(f"{r.address_prefix}/{r.prefix_len.value}" for r in match.prefix_ranges)
    return out


def restrict(listener: listener_pb2.Listener, mode: str, matches: Sequence[Match]) -> None:
    """Edit a private copy of the capture listener for mode None or Matched."""
    listener.ClearField("default_filter_chain")
    if mode != MATCHED:
        return
    added = chains(matches, _claimed(listener))
    listener.filter_chains.extend(added)
    if any(c.filter_chain_match.server_names for c in added) and \
            not any(f.name == lb.TLS_INSPECTOR for f in listener.listener_filters):
        listener.listener_filters.append(lb.tls_inspector())
        listener.listener_filters_timeout.CopyFrom(seconds(INSPECT_TIMEOUT))
        listener.continue_on_listener_filters_timeout = True


def configure(rs: ResourceSet, ctx: MeshView, mode: str, matches: Sequence[Match]) -> None:
    capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
    if capture is None or mode not in (NONE, MATCHED):
        return
    key = (mode, tuple(matches))
    base = capture.shared
    if base is None:
        restrict(capture.message, mode, matches)  # type: ignore[arg-type]
    else:
        def build() -> listener_pb2.Listener:
            out = listener_pb2.Listener()
            out.CopyFrom(base.message)
            restrict(out, mode, matches)
            return out

        rs.replace(capture, ctx.shared(("mp", base.digest, key), LISTENER, capture.name, build))
    if any(m.type == DOMAIN and m.protocol in ("http2", "grpc") for m in matches) and mode == MATCHED \
            and rs.get(CLUSTER, HTTP2_CLUSTER) is None:
        rs.add(CLUSTER, HTTP2_CLUSTER, ctx.memo(("mp", HTTP2_CLUSTER), _http2_cluster), Origin.TRANSPARENT)


def _http2_cluster() -> cluster_pb2.Cluster:
    c = cb.original_dst_cluster(HTTP2_CLUSTER)
    cb._http2(c)
    return c
