"""MeshRateLimit → Envoy local rate limits on each inbound.

HTTP: an empty `envoy.filters.http.local_ratelimit` filter before the router, and the bucket in each inbound route's
per-filter config (RDS), as Kuma does; a route that already carries a bucket keeps it. TCP: a network local rate
limit, prepended to the inbound chain so a refused connection costs nothing further. Both are per proxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_rl
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2

from dpagent.controlplane.policies.meshratelimit.api import Http, Local, Rate
from dpagent.controlplane.xds.builders.core import pack, seconds, wrap_u32
from dpagent.controlplane.xds.builders.listener import insert_http_filters
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

HTTP_FILTER = "envoy.filters.http.local_ratelimit"
TCP_FILTER = "envoy.filters.network.local_ratelimit"


def bucket(rate: Rate) -> token_bucket_pb2.TokenBucket:
    """`num` tokens at most, `num` more per interval (Envoy adds them gradually): a burst of `num`, then the rate."""
    return token_bucket_pb2.TokenBucket(max_tokens=rate.num, tokens_per_fill=wrap_u32(rate.num),
                                        fill_interval=seconds(rate.seconds()))


def _always(key: str) -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED),
        runtime_key=key)


def http_limit(h: Http) -> http_rl.LocalRateLimit:
    assert h.request_rate is not None
    out = http_rl.LocalRateLimit(stat_prefix="rate_limit", token_bucket=bucket(h.request_rate),
                                 filter_enabled=_always("local_rate_limit_enabled"),
                                 filter_enforced=_always("local_rate_limit_enforced"))
    on = h.on_rate_limit
    if on is not None and on.status is not None:
        out.status.CopyFrom(http_status_pb2.HttpStatus(code=on.status))  # type: ignore[arg-type]
    if on is not None and on.headers is not None:
        hvo = base_pb2.HeaderValueOption
        for hv in on.headers.set:
            for value in hv.value.split(","):  # Kuma splits a set value on commas: one header line each
                out.response_headers_to_add.append(hvo(
                    header=base_pb2.HeaderValue(key=hv.name, value=value.strip()),
                    append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD))
        for hv in on.headers.add:
            out.response_headers_to_add.append(hvo(header=base_pb2.HeaderValue(key=hv.name, value=hv.value),
                                                   append_action=hvo.APPEND_IF_EXISTS_OR_ADD))
    return out


def _http_active(local: Local | None) -> bool:
    return local is not None and local.http is not None and not local.http.disabled \
        and local.http.request_rate is not None


def configure(rs: ResourceSet, inbounds: Mapping[str, Local]) -> None:
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        local = inbounds.get(key)
        if local is None:
            continue
        chain = rs.edit(entry).filter_chains[index]  # type: ignore[attr-defined]
        tcp = local.tcp
        if tcp is not None and not tcp.disabled and tcp.connection_rate is not None:
            limit = tcp_rl.LocalRateLimit(stat_prefix="tcp_rate_limit", token_bucket=bucket(tcp.connection_rate))
            filters = [lc.Filter(name=TCP_FILTER, typed_config=pack(limit)), *chain.filters]
            del chain.filters[:]
            chain.filters.extend(filters)
        if _http_active(local):
            insert_http_filters(chain, [hcm_pb2.HttpFilter(
                name=HTTP_FILTER, typed_config=pack(http_rl.LocalRateLimit(stat_prefix="rate_limit")))])
    for entry in list(rs.entries(ROUTE, Origin.INBOUND)):
        local = inbounds.get(entry.inbound)
        if not _http_active(local):
            continue
        assert local is not None and local.http is not None
        per_route = pack(http_limit(local.http))
        route_config = rs.edit(entry)
        for vhost in route_config.virtual_hosts:  # type: ignore[attr-defined]
            for route in vhost.routes:
                if HTTP_FILTER not in route.typed_per_filter_config:
                    route.typed_per_filter_config[HTTP_FILTER].CopyFrom(per_route)
