"""Listener, tcp_proxy, HTTP connection manager and route configuration factories."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.xds.builders.core import ads_source, cidr, pack, socket_address

TCP_PROXY = "envoy.filters.network.tcp_proxy"
HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
ORIGINAL_DST = "envoy.filters.listener.original_dst"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HTTP_PROTOCOLS = ("http", "http2", "grpc")
HTTP2_PROTOCOLS = ("http2", "grpc")
INBOUND = base_pb2.INBOUND
OUTBOUND = base_pb2.OUTBOUND


def listener(name: str, address: str, port: int, direction: int, filters: Sequence[listener_components_pb2.Filter],
             transport_socket: base_pb2.TransportSocket | None = None) -> listener_pb2.Listener:
    chain = listener_components_pb2.FilterChain(filters=list(filters))
    if transport_socket is not None:
        chain.transport_socket.CopyFrom(transport_socket)
    return listener_pb2.Listener(name=name, address=socket_address(address, port), traffic_direction=direction,
                                 filter_chains=[chain])


def listener_with_chains(name: str, address: str, port: int, direction: int,
                         chains: Sequence[listener_components_pb2.FilterChain]) -> listener_pb2.Listener:
    return listener_pb2.Listener(name=name, address=socket_address(address, port), traffic_direction=direction,
                                 filter_chains=list(chains))


def filter_chain(filters: Sequence[listener_components_pb2.Filter],
                 transport_socket: base_pb2.TransportSocket | None = None, *, name: str = "",
                 destination_port: int = 0, prefixes: Sequence[str] = (), transport_protocol: str = "",
                 alpn: Sequence[str] = ()) -> listener_components_pb2.FilterChain:
    """A chain matched on the connection's (original) destination: port and/or exact addresses (/32, /128); and,
    behind a TLS inspector, on what the client opened with (`tls`/`raw_buffer`, its ALPN list)."""
    chain = listener_components_pb2.FilterChain(name=name, filters=list(filters))
    if destination_port or prefixes or transport_protocol or alpn:
        match = listener_components_pb2.FilterChainMatch(prefix_ranges=[cidr(p) for p in prefixes],
                                                         transport_protocol=transport_protocol,
                                                         application_protocols=list(alpn))
        if destination_port:
            match.destination_port.value = destination_port
        chain.filter_chain_match.CopyFrom(match)
    if transport_socket is not None:
        chain.transport_socket.CopyFrom(transport_socket)
    return chain


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    """Reads the ClientHello (or sees there is none) so chains can match TLS vs plaintext and the ALPN list."""
    return listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR,
                                                  typed_config=pack(tls_inspector_pb2.TlsInspector()))


def capture_listener(name: str, port: int, direction: int, chains: Sequence[listener_components_pb2.FilterChain],
                     default_chain: listener_components_pb2.FilterChain, *, ipv6: bool = False
                     ) -> listener_pb2.Listener:
    """A transparent-proxy listener: iptables REDIRECTs here, `original_dst` restores the address the app dialled
    so chains can match on it, and whatever matches no chain takes `default_chain` (passthrough).

    `ipv6`: also listen on [::]:`port` (ip6tables REDIRECTs there) as an additional address of the same listener
    rather than a second listener, so the chains exist once and every plugin that edits this listener covers both
    families. `[::]` is bound IPv6-only (no ipv4_compat): IPv4 keeps its own socket on 0.0.0.0."""
    original_dst = listener_components_pb2.ListenerFilter(name=ORIGINAL_DST,
                                                          typed_config=pack(original_dst_pb2.OriginalDst()))
    out = listener_pb2.Listener(name=name, address=socket_address("0.0.0.0", port), traffic_direction=direction,
                                listener_filters=[original_dst], filter_chains=list(chains),
                                default_filter_chain=default_chain)
    if ipv6:
        out.additional_addresses.add().address.CopyFrom(socket_address("::", port))
    return out


def pipe_address(path: str, mode: int = 0o600) -> address_pb2.Address:
    return address_pb2.Address(pipe=address_pb2.Pipe(path=path, mode=mode))


def tcp_proxy(stat_prefix: str, cluster: str) -> listener_components_pb2.Filter:
    cfg = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(cfg))


def route_config(name: str, cluster: str, validate_clusters: bool = True) -> route_pb2.RouteConfiguration:
    """One virtual host with one catch-all route to `cluster`."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[route_components_pb2.VirtualHost(name=cluster, domains=["*"], routes=[route])],
        validate_clusters=wrappers_pb2.BoolValue(value=validate_clusters),
    )


def http_connection_manager(stat_prefix: str, route_name: str, cluster: str,
                            http_filters: Sequence[hcm_pb2.HttpFilter] = (),
                            validate_clusters: bool = True,
                            forward_identity: bool = False,
                            rds: bool = False) -> listener_components_pb2.Filter:
    """One virtual host, one catch-all route to `cluster`, inline unless `rds`.

    validate_clusters=False on outbounds: the target service may have no cluster yet (no dataplane), and an inline
    route to an unknown cluster would make Envoy reject the whole listener instead of answering 503.
    forward_identity=True on inbounds: the app gets `x-forwarded-client-cert` with the caller's SPIFFE URI (and a
    header the caller sent itself is replaced, so it cannot be forged).
    rds=True: the route configuration `route_name` comes over ADS (built with route_config()); a change to it
    (per-route filter config such as RBAC) reaches open connections at once, without replacing the listener.
    """
    cfg = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=[*http_filters, hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))],
    )
    if rds:
        cfg.rds.CopyFrom(hcm_pb2.Rds(config_source=ads_source(), route_config_name=route_name))
    else:
        cfg.route_config.CopyFrom(route_config(route_name, cluster, validate_clusters))
    if forward_identity:
        cfg.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        cfg.set_current_client_cert_details.uri = True
    return listener_components_pb2.Filter(name=HCM, typed_config=pack(cfg))



def hcm_index(chain: listener_components_pb2.FilterChain) -> int | None:
    """Where the chain's connection manager sits; a policy may have prepended network filters (a TCP rate limit),
    so it is not always first. None for a TCP chain."""
    return next((i for i, f in enumerate(chain.filters) if f.name == HCM), None)


def insert_http_filters(chain: listener_components_pb2.FilterChain, filters: Sequence[hcm_pb2.HttpFilter]) -> bool:
    """Put `filters` just before the router of the chain's connection manager (policies that act on requests
    already let through by RBAC); False when the chain has no connection manager (a TCP chain)."""
    at_hcm = hcm_index(chain)
    if at_hcm is None:
        return False
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[at_hcm].typed_config.Unpack(hcm)
    current = list(hcm.http_filters)
    at = next((i for i, f in enumerate(current) if f.name == ROUTER), len(current))
    current[at:at] = filters
    del hcm.http_filters[:]
    hcm.http_filters.extend(current)
    chain.filters[at_hcm].typed_config.CopyFrom(pack(hcm))
    return True


def http_filter_names(chain: listener_components_pb2.FilterChain) -> list[str]:
    at_hcm = hcm_index(chain)
    if at_hcm is None:
        return []
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[at_hcm].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]
