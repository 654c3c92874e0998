"""Cluster and ClusterLoadAssignment factories."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from dpagent.controlplane.xds.builders.core import ads_source, pack, seconds, socket_address

CONNECT_TIMEOUT = 5.0
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def load_assignment(name: str, endpoints: Iterable[tuple[str, int]]) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints sorted so the bytes (and the content-hash version) only change when membership does."""
    lb = [endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket_address(a, p)))
          for a, p in sorted(set(endpoints))]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)])


def _http2(cluster: cluster_pb2.Cluster) -> None:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(opts))


def eds_cluster(name: str, *, http2: bool, tls: base_pb2.TransportSocket | None) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=seconds(CONNECT_TIMEOUT),
    )
    if tls is not None:
        c.transport_socket.CopyFrom(tls)
    if http2:
        _http2(c)
    return c


def _bind(cluster: cluster_pb2.Cluster, source: str) -> None:
    cluster.upstream_bind_config.CopyFrom(address_pb2.BindConfig(source_address=address_pb2.SocketAddress(
        address=source, port_value=0)))


def static_cluster(name: str, address: str, port: int, *, http2: bool, bind_source: str = "") -> cluster_pb2.Cluster:
    """`bind_source` (transparent proxy): connect to the app from that address (127.0.0.6 / ::6), which the
    iptables rules let through, so the hop from Envoy to the app is not captured again."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=seconds(CONNECT_TIMEOUT),
        load_assignment=load_assignment(name, [(address, port)]),
    )
    if http2:
        _http2(c)
    if bind_source:
        _bind(c, bind_source)
    return c


def original_dst_cluster(name: str, *, bind_source: str = "", bind_source_v6: str = "") -> cluster_pb2.Cluster:
    """Passthrough: connect to wherever the captured connection was going (the listener's original_dst filter
    restored that address). `bind_source_v6` is an extra source Envoy's default address selector picks for IPv6
    destinations (`bind_source` for IPv4 ones), so one cluster serves a capture listener of both families."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=seconds(CONNECT_TIMEOUT),
    )
    if bind_source:
        _bind(c, bind_source)
        if bind_source_v6:
            c.upstream_bind_config.extra_source_addresses.add().address.CopyFrom(
                address_pb2.SocketAddress(address=bind_source_v6, port_value=0))
    return c
