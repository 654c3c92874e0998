"""MeshTimeout → Envoy (reference kuma-policies.md §4.2).

Outbound: the destination's clusters get connect_timeout and, for http/http2 (not grpc, as Kuma), the upstream
idle / max-stream / max-connection durations; its routes get the request timeout and per-route stream idle
timeout; its HCM gets the request-headers timeout and a zero downstream idle timeout (the cluster's governs, as in
Kuma); a TCP destination's tcp_proxy gets idle_timeout. Inbound: the same on the local cluster, the inbound routes
and the inbound chain's HCM or tcp_proxy.

Clusters, outbound routes and the capture listener are shared between proxies; an edit of a shared one is
memoised by (resource, its input bytes, effective timeouts), so every client with the same timeouts toward a
service still shares one serialised copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import inbound_key
from dpagent.controlplane.policies.meshroute.xds import protocols
from dpagent.controlplane.policies.meshtimeout.api import KIND, Http, Timeouts
from dpagent.controlplane.policies.meshtimeout.plugin import TimeoutRules
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.cluster import HTTP_OPTIONS_KEY
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.builders.listener import HCM, TCP_PROXY
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE
from dpagent.model.dataplane import Dataplane

_HTTP_CLUSTER_PROTOCOLS = ("http", "http2")


def _http(t: Timeouts) -> Http:
    return t.http or Http()


def edit_cluster(cluster: cluster_pb2.Cluster, t: Timeouts, protocol: str) -> None:
    if t.connection_timeout:
        cluster.connect_timeout.CopyFrom(seconds(t.connection_timeout))
    if protocol not in _HTTP_CLUSTER_PROTOCOLS:
        return
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    if HTTP_OPTIONS_KEY in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(opts)
    if not opts.HasField("explicit_http_config") and not opts.HasField("use_downstream_protocol_config") \
            and not opts.HasField("auto_config"):
        opts.explicit_http_config.http_protocol_options.SetInParent()
    common, h = opts.common_http_protocol_options, _http(t)
    if t.idle_timeout is not None:
        common.idle_timeout.CopyFrom(seconds(t.idle_timeout))
    if h.max_stream_duration:
        common.max_stream_duration.CopyFrom(seconds(h.max_stream_duration))
    if h.max_connection_duration:
        common.max_connection_duration.CopyFrom(seconds(h.max_connection_duration))
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(opts))


def edit_routes(route_config: Any, t: Timeouts) -> None:
    h = _http(t)
    for vhost in route_config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue  # redirects and direct responses have no upstream to time out
            if h.request_timeout is not None:
                route.route.timeout.CopyFrom(seconds(h.request_timeout))
            if h.stream_idle_timeout is not None:
                route.route.idle_timeout.CopyFrom(seconds(h.stream_idle_timeout))


def edit_filter(f: listener_components_pb2.Filter, t: Timeouts) -> bool:
    """The HCM or tcp_proxy of one chain; False when it is neither (nothing to do)."""
    if f.name == HCM:
        hcm = hcm_pb2.HttpConnectionManager()
        f.typed_config.Unpack(hcm)
        hcm.common_http_protocol_options.idle_timeout.CopyFrom(seconds(0))
        if _http(t).request_headers_timeout:
            hcm.request_headers_timeout.CopyFrom(seconds(_http(t).request_headers_timeout or 0))
        f.typed_config.CopyFrom(pack(hcm))
        return True
    if f.name == TCP_PROXY and t.idle_timeout is not None:
        proxy = tcp_proxy_pb2.TcpProxy()
        f.typed_config.Unpack(proxy)
        proxy.idle_timeout.CopyFrom(seconds(t.idle_timeout))
        f.typed_config.CopyFrom(pack(proxy))
        return True
    return False


def _edit(rs: ResourceSet, ctx: MeshView, entry: Entry, tag: Any, edit: Callable[[Message], None]) -> None:
    """Edit `entry`; a shared one is swapped for the copy memoised by (its bytes, `tag`)."""
    if entry.shared is None:
        edit(entry.message)
        return
    source = entry.shared

    def build() -> Message:
        copy = type(source.message)()
        copy.CopyFrom(source.message)
        edit(copy)
        return copy

    rs.replace(entry, ctx.shared((KIND, entry.type_url, entry.name, source.digest, tag), entry.type_url, entry.name,
                                 build))


def _edit_filters(listener: Message, t: Timeouts) -> None:
    for chain in listener.filter_chains:  # type: ignore[attr-defined]
        for f in chain.filters:
            edit_filter(f, t)


def _outbound(rs: ResourceSet, ctx: MeshView, rules: TimeoutRules) -> None:
    kinds = protocols(ctx)
    cache: dict[str, Timeouts | None] = {}

    def conf(service: str) -> Timeouts | None:
        if service not in cache:
            cache[service] = rules.outbound(service)
        return cache[service]

    for entry in list(rs.entries(CLUSTER, Origin.OUTBOUND)):
        t = conf(entry.service) if entry.service else None
        if t is not None:
            protocol = kinds.get(entry.service, "tcp")
            _edit(rs, ctx, entry, t, lambda m, t=t, p=protocol: edit_cluster(m, t, p))  # type: ignore[misc]
    for entry in list(rs.entries(ROUTE, Origin.OUTBOUND)):
        t = conf(entry.service) if entry.service else None
        if t is not None:
            _edit(rs, ctx, entry, t, lambda m, t=t: edit_routes(m, t))  # type: ignore[misc]
    for entry in list(rs.entries(LISTENER, Origin.OUTBOUND)):
        t = conf(entry.service) if entry.service else None
        if t is not None:
            _edit(rs, ctx, entry, t, lambda m, t=t: _edit_filters(m, t))  # type: ignore[misc]
    capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
    if capture is None:
        return
    by_chain: dict[str, Timeouts] = {}
    for chain in capture.message.filter_chains:  # type: ignore[attr-defined]
        service = chain.name[len("outbound:"):].rsplit(":", 1)[0] if chain.name.startswith("outbound:") else ""
        t = conf(service) if service in kinds else None
        if t is not None:
            by_chain[chain.name] = t

    def edit_capture(listener: Message) -> None:
        for chain in listener.filter_chains:  # type: ignore[attr-defined]
            t = by_chain.get(chain.name)
            for f in chain.filters if t is not None else ():
                edit_filter(f, t)

    if by_chain:
        _edit(rs, ctx, capture, tuple(sorted(by_chain.items())), edit_capture)


def _inbound(rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: TimeoutRules) -> None:
    protocol = {inbound_key(dp, ib): ib.protocol for ib in dp.networking.inbound}
    for entry in list(rs.entries(CLUSTER, Origin.INBOUND)):
        t = rules.inbounds.get(entry.inbound)
        if t is not None:
            p = protocol.get(entry.inbound, "tcp")
            _edit(rs, ctx, entry, (t, p), lambda m, t=t, p=p: edit_cluster(m, t, p))  # type: ignore[misc]
    for entry in list(rs.entries(ROUTE, Origin.INBOUND)):
        t = rules.inbounds.get(entry.inbound)
        if t is not None:
            edit_routes(rs.edit(entry), t)
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        t = rules.inbounds.get(key)
        if t is not None and protocol.get(key) is not None:
            for f in rs.edit(entry).filter_chains[index].filters:  # type: ignore[attr-defined]
                if f.name in (HCM, TCP_PROXY):
                    edit_filter(f, t)


def configure(rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: TimeoutRules) -> None:
    if rules.to:
        _outbound(rs, ctx, rules)
    if rules.inbounds:
        _inbound(rs, ctx, dp, rules)

