"""The one list of policy plugins, one line each; every other kind list (REST paths, CLI names and aliases,
`apply` dispatch, the kinds sync watches and parses, the generator profile's plugin step) derives from it.
Sorted by Kuma's order; two plugins with one order fail at import."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dpagent.controlplane.policies.base import PolicyPlugin
from dpagent.controlplane.policies.meshaccesslog import MeshAccessLogPlugin
from dpagent.controlplane.policies.meshcircuitbreaker import MeshCircuitBreakerPlugin
from dpagent.controlplane.policies.meshexternalservice import MeshExternalServicePlugin
from dpagent.controlplane.policies.meshfaultinjection import MeshFaultInjectionPlugin
from dpagent.controlplane.policies.meshhealthcheck import MeshHealthCheckPlugin
from dpagent.controlplane.policies.meshhttproute import MeshHTTPRoutePlugin
from dpagent.controlplane.policies.meshloadbalancingstrategy import MeshLoadBalancingStrategyPlugin
from dpagent.controlplane.policies.meshmetric import MeshMetricPlugin
from dpagent.controlplane.policies.meshpassthrough import MeshPassthroughPlugin
from dpagent.controlplane.policies.meshproxypatch import MeshProxyPatchPlugin
from dpagent.controlplane.policies.meshratelimit import MeshRateLimitPlugin
from dpagent.controlplane.policies.meshretry import MeshRetryPlugin
from dpagent.controlplane.policies.meshtcproute import MeshTCPRoutePlugin
from dpagent.controlplane.policies.meshtimeout import MeshTimeoutPlugin
from dpagent.controlplane.policies.meshtls import MeshTLSPlugin
from dpagent.controlplane.policies.meshtrace import MeshTracePlugin
from dpagent.controlplane.policies.meshtrafficpermission import MeshTrafficPermissionPlugin

_PLUGINS: tuple[PolicyPlugin, ...] = (
    MeshExternalServicePlugin(),  # 50: a resource, not a policy: external services' clusters, routes, VIP chains
    MeshHTTPRoutePlugin(),  # 100: outbound routes and the clusters their backends need
    MeshTCPRoutePlugin(),  # 200: outbound tcp_proxy splits
    MeshTLSPlugin(),  # 300: Strict/Permissive inbounds, TLS versions and ciphers on inbound and in-mesh outbound TLS
    MeshLoadBalancingStrategyPlugin(),  # 400: outbound cluster balancer, route hash policies, zone priorities
    MeshPassthroughPlugin(),  # 500: which traffic leaving the mesh the transparent proxy passes through
    MeshAccessLogPlugin(),  # 600: access logs on HCMs and tcp_proxies (file, TCP via the agent, OpenTelemetry)
    MeshTracePlugin(),  # 700: HCM tracing on every HTTP listener, the collector cluster
    MeshFaultInjectionPlugin(),  # 800: faults on HTTP inbounds
    MeshRateLimitPlugin(),  # 900: local rate limits on inbounds
    MeshTimeoutPlugin(),  # 1000: cluster, route, HCM and tcp_proxy timeouts
    MeshTrafficPermissionPlugin(),  # 1100
    MeshHealthCheckPlugin(),  # 1200: active health checks on outbound clusters
    MeshCircuitBreakerPlugin(),  # 1300: outbound/inbound cluster limits and outlier detection
    MeshRetryPlugin(),  # 1400: retry policies on outbound routes, connect attempts on outbound tcp_proxies
    MeshMetricPlugin(),  # 1500: Prometheus listener to the agent's merged scrape, conf to the agent over dynconf
    MeshProxyPatchPlugin(),  # 9999: raw Envoy modifications, applied last
)


def check(plugins: Sequence[PolicyPlugin]) -> tuple[PolicyPlugin, ...]:
    """Sorted by order; duplicate orders, kinds or names are a programming error caught at import."""
    orders: dict[int, str] = {}
    names: dict[str, str] = {}
    for p in plugins:
        if p.order in orders:
            raise RuntimeError(f"policy plugins {orders[p.order]} and {p.kind} share order {p.order}")
        orders[p.order] = p.kind
        for n in (p.kind.lower(), p.plural, *p.aliases):
            if n in names:
                raise RuntimeError(f"policy plugins {names[n]} and {p.kind} both claim the name {n!r}")
            names[n] = p.kind
    return tuple(sorted(plugins, key=lambda p: p.order))


PLUGINS = check(_PLUGINS)
POLICY_KINDS: Mapping[str, PolicyPlugin] = {p.kind: p for p in PLUGINS}


def plugin_for(kind: str) -> PolicyPlugin | None:
    return POLICY_KINDS.get(kind)
