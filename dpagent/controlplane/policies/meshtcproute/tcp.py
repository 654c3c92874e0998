"""MeshTCPRoute → the outbound's tcp_proxy (reference kuma-policies.md §3). Pure: backendRefs become cluster names
through `resolve`.

Merging: a destination's `rules` is a list, so JSON merge patch replaces it whole and the highest-priority
policy's rules win; of those only the first rule counts. No rules at all means "the destination itself".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshroute.backends import resolve_legacy
from dpagent.controlplane.policies.meshroute.refs import BackendRef, rules_by_destination
from dpagent.controlplane.policies.meshtcproute.api import Rule, to_rules
from dpagent.controlplane.xds.builders.core import pack

TCP_PROXY = "envoy.filters.network.tcp_proxy"
DEFAULT_WEIGHT = 1

Resolve = Callable[[BackendRef], "str | None"]


def destination_rules(matched: Matched, service: str) -> list[tuple[Rule, ...]]:
    """The `to[].rules` lists of the matched policies that reach the legacy destination `service`, lowest
    priority first."""
    return rules_by_destination(matched.to, lambda i: to_rules(i.conf)).get(service, [])


def outbound_tcp_proxy(stat_prefix: str, rule_lists: Sequence[Sequence[Rule]], destination: str,
                       resolve: Resolve = resolve_legacy,
                       ) -> tuple[listener_components_pb2.Filter | None, list[BackendRef]]:
    """The whole TCP route step for one outbound: the tcp_proxy (None when no backend is usable) and the
    backendRefs whose clusters must exist."""
    rule = effective_rule(rule_lists)
    weighted = backends(rule, destination, resolve)
    refs = list(rule.default.backend_refs) if rule is not None else []
    return (tcp_proxy(stat_prefix, weighted) if weighted else None), refs


def effective_rule(rule_lists: Sequence[Sequence[Rule]]) -> Rule | None:
    """`rule_lists`: each matched policy's `to[].rules` for this destination, lowest priority first."""
    if not rule_lists or not rule_lists[-1]:
        return None
    return rule_lists[-1][0]


def backends(rule: Rule | None, destination: str, resolve: Resolve = resolve_legacy) -> list[tuple[str, int]]:
    """(cluster, weight) pairs; zero weights and refs that resolve to nothing are dropped, so the result may be
    empty (the caller then leaves the destination without a route, as Kuma does)."""
    if rule is None:
        return [(destination, DEFAULT_WEIGHT)]
    out = []
    for ref in rule.default.backend_refs:
        cluster = resolve(ref)
        if cluster is not None and ref.weight > 0:
            out.append((cluster, ref.weight))
    return out


def tcp_proxy(stat_prefix: str, weighted: Sequence[tuple[str, int]]) -> listener_components_pb2.Filter:
    """One backend → `cluster`; several → `weighted_clusters` with the weights as given."""
    if not weighted:
        raise ValueError("a tcp_proxy needs at least one backend")
    cfg = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(weighted) == 1:
        cfg.cluster = weighted[0][0]
    else:
        cfg.weighted_clusters.CopyFrom(tcp_proxy_pb2.TcpProxy.WeightedCluster(clusters=[
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=c, weight=w) for c, w in weighted]))
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(cfg))


def uses_tcp_route(protocol: str, has_http_route: bool, has_tcp_route: bool) -> bool:
    """Which route policy shapes an outbound: an HTTP destination keeps its HCM unless a MeshTCPRoute and no
    MeshHTTPRoute applies to it; any other destination takes the tcp_proxy (§3, "MeshHTTPRoute takes priority")."""
    if protocol in ("http", "http2", "grpc"):
        return has_tcp_route and not has_http_route
    return True

