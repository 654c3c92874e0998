"""Putting a route policy's result onto an outbound listener the core generator already built: the HTTP route
swaps the inline RouteConfiguration inside the HCM; the TCP route replaces the chain's filters with its tcp_proxy
(an HTTP destination that only a MeshTCPRoute shapes becomes plain L4, §3).

Pure: each returns an edited copy and never touches the input, which may be shared between proxies.
"""

from __future__ import annotations

from collections.abc import Container

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.xds.builders.core import pack

HCM = "envoy.filters.network.http_connection_manager"


def with_route_config(listener: listener_pb2.Listener, route_config: route_pb2.RouteConfiguration,
                      chains: Container[str] | None = None) -> listener_pb2.Listener:
    """A copy whose HCMs serve `route_config` inline; everything else in the HCM (HTTP filters added by
    other policies, stat prefix, path normalisation) is kept. A listener without an HCM is returned unchanged.

    `chains`: only the filter chains with these names (one destination's chain of the transparent-proxy capture
    listener); None means every chain (a per-service outbound listener)."""
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        if chains is not None and chain.name not in chains:
            continue
        for f in chain.filters:
            if f.name != HCM:
                continue
            cfg = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(cfg)
            cfg.route_config.CopyFrom(route_config)
            f.typed_config.CopyFrom(pack(cfg))
    return out


def with_tcp_proxy(listener: listener_pb2.Listener, tcp_proxy: listener_components_pb2.Filter,
                   chains: Container[str] | None = None) -> listener_pb2.Listener:
    """A copy whose filter chains (those named in `chains`, or all) carry only `tcp_proxy`; an HCM is dropped."""
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        if chains is not None and chain.name not in chains:
            continue
        del chain.filters[:]
        chain.filters.append(tcp_proxy)
    return out
