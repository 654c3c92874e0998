"""MeshRetry → the outbound resources of one proxy (reference kuma-policies.md §5 placement):

- HTTP/gRPC destinations: `retry_policy` on every forwarding route of the service's `outbound:<service>` route
  config (served over RDS, so open connections pick it up). The edited config is built and serialised once per
  (route config bytes, protocol, effective conf) per mesh change and shared by every proxy that gets the same
  conf, so a per-client MeshRetry splits the sharing only as far as the confs differ.
- TCP destinations: `max_connect_attempts` on the tcp_proxy of the outbound listener or capture-listener chains.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshretry.api import KIND
from dpagent.controlplane.policies.meshretry.plugin import RetryRules
from dpagent.controlplane.policies.meshretry.retry import max_connect_attempts, retry_policy
from dpagent.controlplane.policies.meshroute.xds import protocols
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.core import pack
from dpagent.controlplane.xds.generators.transparent import VIP_PORT, service_ports
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

TCP_PROXY = "envoy.filters.network.tcp_proxy"


def configure(rs: ResourceSet, ctx: MeshView, rules: RetryRules) -> None:
    kinds = protocols(ctx)
    for entry in list(rs.entries(ROUTE, Origin.OUTBOUND)):
        protocol = kinds.get(entry.service, "tcp")
        eff = rules.effective(entry.service)
        if eff is None:
            continue
        conf_json, conf = eff
        # Built once per (protocol, conf) per mesh change, not once per proxy and service.
        policy = ctx.memo((KIND, "policy", protocol, conf_json), lambda c=conf, p=protocol: retry_policy(c, p))
        if policy is None:
            continue
        if entry.shared is None:  # already private to this proxy: edit it where it is
            with_retries(rs.edit(entry), policy)  # type: ignore[arg-type]
            continue
        original = entry.shared
        key = (KIND, "route", entry.name, original.digest, protocol, conf_json)
        rs.replace(entry, ctx.shared(key, ROUTE, entry.name, lambda m=original.message, rp=policy:
                                     _copy_with_retries(m, rp)))  # type: ignore[arg-type]
    _tcp(rs, ctx, rules, kinds)


def _copy_with_retries(message: route_pb2.RouteConfiguration, policy: rc.RetryPolicy,
                       ) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration()
    out.CopyFrom(message)
    with_retries(out, policy)
    return out


def with_retries(config: route_pb2.RouteConfiguration, policy: rc.RetryPolicy) -> None:
    """Put the retry policy on every route that forwards (redirects and direct responses have nothing to retry)."""
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            if route.HasField("route"):
                route.route.retry_policy.CopyFrom(policy)


def _tcp(rs: ResourceSet, ctx: MeshView, rules: RetryRules, kinds: dict[str, str]) -> None:
    def attempts(service: str) -> int | None:
        eff = rules.effective(service)
        return None if eff is None else max_connect_attempts(eff[1], kinds.get(service, "tcp"))

    for entry in list(rs.entries(LISTENER, Origin.OUTBOUND)):
        n = attempts(entry.service)
        if n is not None:
            _set_attempts(rs.edit(entry), lambda _chain, n=n: n)  # type: ignore[arg-type]
    capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
    if capture is None:
        return
    ports = ctx.dp_memo(("meshroute", "ports"), lambda: service_ports(ctx.dataplanes))
    if ctx.external_services:
        ports = {**ports, **{es.key: [es.port] for es in ctx.external_services}}
    by_chain: dict[str, int] = {}
    for service, protocol in kinds.items():
        if protocol != "tcp":
            continue
        n = attempts(service)
        if n is not None:
            by_chain.update({names.outbound_chain(service, p): n for p in {VIP_PORT, *ports.get(service, ())}})
    chains = {c.name for c in capture.message.filter_chains}  # type: ignore[attr-defined]
    wanted = tuple(sorted((c, n) for c, n in by_chain.items() if c in chains))
    if not wanted:
        return
    if capture.shared is None:
        _set_attempts(capture.message, dict(wanted).get)  # type: ignore[arg-type]
        return
    original = capture.shared

    def build() -> listener_pb2.Listener:
        out = listener_pb2.Listener()
        out.CopyFrom(original.message)
        _set_attempts(out, dict(wanted).get)
        return out

    rs.replace(capture, ctx.shared((KIND, "capture", original.digest, wanted), LISTENER, capture.name, build))


def _set_attempts(listener: listener_pb2.Listener, attempts: Callable[[str], int | None]) -> None:
    for chain in listener.filter_chains:
        n = attempts(chain.name)
        if n is None:
            continue
        for f in chain.filters:
            if f.name == TCP_PROXY:
                _edit_tcp_proxy(f, n)


def _edit_tcp_proxy(f: listener_components_pb2.Filter, attempts: int) -> None:
    cfg = tcp_proxy_pb2.TcpProxy()
    f.typed_config.Unpack(cfg)
    cfg.max_connect_attempts.CopyFrom(wrappers_pb2.UInt32Value(value=attempts))
    f.typed_config.CopyFrom(pack(cfg))
