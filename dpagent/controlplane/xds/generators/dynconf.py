"""The "dynconf" listener: config the CP hands to the agent (the DNS table) as direct responses on a Unix socket in
the agent's work dir, so it rides Envoy's ADS connection and the agent needs no second channel to the CP."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.core import pack, wrap_u32

ENVOY_DEFAULT_MAX_BODY = 4096


def etag(body: bytes) -> str:
    """Hex SHA-256 of the body: the agent sends it back as If-None-Match and gets 304 while nothing changed."""
    return hashlib.sha256(body).hexdigest()


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def _routes(path: str, body: bytes) -> list[route_components_pb2.Route]:
    tag = etag(body)
    unchanged = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=path, headers=[route_components_pb2.HeaderMatcher(
            name="if-none-match", string_match=string_pb2.StringMatcher(exact=tag))]),
        direct_response=route_components_pb2.DirectResponseAction(status=304),
        response_headers_to_add=[_header("etag", tag)])
    current = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=path),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string=body.decode())),
        response_headers_to_add=[_header("etag", tag), _header("content-type", "application/json")])
    return [unchanged, current]


def dynconf_listener(bodies: Mapping[str, bytes]) -> listener_pb2.Listener:
    """`bodies`: path → UTF-8 JSON body (e.g. {"/dns": dns_table(...)}). Unknown paths get Envoy's 404.

    The socket path is relative (Envoy resolves it against its cwd, the agent's work dir), so every proxy with the
    same table gets byte-identical config that the CP can serialise once.
    """
    routes = [r for path, body in sorted(bodies.items()) for r in _routes(path, body)]
    biggest = max((len(b) for b in bodies.values()), default=0)
    cfg = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.stat_prefix(names.DYNCONF_LISTENER),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=names.DYNCONF_LISTENER,
            virtual_hosts=[route_components_pb2.VirtualHost(name=names.DYNCONF_LISTENER, domains=["*"],
                                                            routes=routes)],
            max_direct_response_body_size_bytes=wrap_u32(max(biggest, ENVOY_DEFAULT_MAX_BODY))),
        http_filters=[hcm_pb2.HttpFilter(name=lb.ROUTER, typed_config=pack(router_pb2.Router()))],
    )
    chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(name=lb.HCM,
                                                                                        typed_config=pack(cfg))])
    return listener_pb2.Listener(name=names.DYNCONF_LISTENER, address=lb.pipe_address(names.DYNCONF_SOCKET),
                                 filter_chains=[chain])


def add_dynconf_route(listener: listener_pb2.Listener, path: str, body: bytes) -> None:
    """Serve `body` at `path` on an existing dynconf listener (in place; callers edit a private copy), so a policy
    can hand the agent its conf next to the DNS table without knowing what else the listener carries."""
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    rc = hcm.route_config
    vhost = rc.virtual_hosts[0]
    kept = [r for r in vhost.routes if r.match.path != path]
    del vhost.routes[:]
    vhost.routes.extend(sorted([*kept, *_routes(path, body)], key=lambda r: r.match.path))  # stable: 304 first
    rc.max_direct_response_body_size_bytes.value = max(rc.max_direct_response_body_size_bytes.value, len(body))
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(hcm))


def set_dynconf_route(rs: Any, ctx: Any, path: str, body: bytes) -> None:
    """Serve `body` at `path` on this proxy's dynconf listener, creating the listener when the proxy has none (no
    transparent proxy). A shared listener stays shared: the edited copy is memoised by (its digest, path, body)."""
    from dpagent.controlplane.xds.resources import Origin
    from dpagent.controlplane.xds.snapshot import LISTENER, Resource

    entry = rs.get(LISTENER, names.DYNCONF_LISTENER)
    if entry is None:
        rs.add(LISTENER, names.DYNCONF_LISTENER, ctx.memo((names.DYNCONF_LISTENER, path, body), lambda: Resource(
            names.DYNCONF_LISTENER, dynconf_listener({path: body}), LISTENER)), Origin.DYNCONF)
        return
    if entry.shared is not None:
        base = entry.shared

        def build() -> Any:
            msg = type(base.message)()
            msg.CopyFrom(base.message)
            add_dynconf_route(msg, path, body)
            return Resource(names.DYNCONF_LISTENER, msg, LISTENER)

        rs.replace(entry, ctx.memo((names.DYNCONF_LISTENER, base.digest, path, body), build))
        return
    add_dynconf_route(rs.edit(entry), path, body)
