"""What generation reads about one mesh (MeshContext, immutable per change) and about one proxy (Proxy: its
Dataplane plus every policy kind's matched policies and rules).

The context also memoises resources that are identical for many proxies and hands out one serialised `Resource`
per key, so sharing survives per-proxy policy: a plugin that gives a service's cluster a conf asks for the memo
keyed by (service, effective conf) and every proxy with the same conf gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.protobuf.message import Message

from dpagent.controlplane.policies.base import Rules
from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.matching import Matched, match
from dpagent.controlplane.policies.meshexternalservice.api import ExternalService, external_services
from dpagent.controlplane.policies.registry import PLUGINS, plugin_for
from dpagent.controlplane.policies.targetref import MESH_EXTERNAL_SERVICE
from dpagent.controlplane.xds.builders.tls import mesh_ca_secret
from dpagent.controlplane.xds.dns import dns_table
from dpagent.controlplane.xds.generators.dynconf import dynconf_listener
from dpagent.controlplane.xds.generators.outbound import service_protocols, shared_clusters
from dpagent.controlplane.xds.generators.transparent import (
    outbound_capture_listener,
    service_addresses,
    service_ports,
)
from dpagent.controlplane.xds.names import DYNCONF_DNS_PATH, DYNCONF_LISTENER, MESH_CA, OUTBOUND_PASSTHROUGH
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resource
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh, mtls_enabled


@dataclass(frozen=True)
class MeshContext:
    """Everything generation reads about one mesh. `policies` maps kind → parsed policies (raw documents are
    parsed by their plugin on first use)."""

    mesh: Mesh
    dataplanes: Sequence[Dataplane] = ()
    policies: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    trust_bundle: str = ""  # PEM roots proxies of this mesh trust; pushed as the `mesh_ca` secret
    vips: Mapping[str, str] = field(default_factory=dict)  # service → virtual IP (allocated and stored by sync)

    @cached_property
    def parsed_policies(self) -> Mapping[str, list[Policy]]:
        out: dict[str, list[Policy]] = {}
        for kind, docs in self.policies.items():
            plugin = plugin_for(kind)
            if plugin is not None:
                out[kind] = [plugin.parse(d) for d in docs]
        return out

    @cached_property
    def external_services(self) -> tuple[ExternalService, ...]:
        """The mesh's MeshExternalServices with their VIPs; from the policies, so never kept across a change."""
        return external_services(self.parsed_policies.get(MESH_EXTERNAL_SERVICE, ()))

    @cached_property
    def service_protocols(self) -> Mapping[str, str]:
        """Each service's protocol, computed once per context: every proxy's outbound listeners need it, and
        deriving it walks all dataplanes (O(N) per proxy, O(N²) per mesh otherwise). The context is immutable."""
        return service_protocols(self.dataplanes)

    @cached_property
    def service_addresses(self) -> Mapping[str, list[tuple[str, int]]]:
        return service_addresses(self.dataplanes)

    @cached_property
    def service_ports(self) -> Mapping[str, list[int]]:
        return service_ports(self.dataplanes)

    @cached_property
    def _memo(self) -> dict[Hashable, Any]:
        return {}

    @cached_property
    def _dp_memo(self) -> dict[Hashable, Any]:
        return {}

    @cached_property
    def by_service(self) -> Mapping[str, tuple[str, ...]]:
        """Dataplane names per service of their inbounds: who a MeshService targetRef can select."""
        out: dict[str, list[str]] = {}
        for dp in self.dataplanes:
            for service in sorted({ib.service for ib in dp.networking.inbound if ib.service}):
                out.setdefault(service, []).append(dp.name)
        return {s: tuple(names) for s, names in out.items()}

    @cached_property
    def consumers(self) -> tuple[Mapping[str, frozenset[str]], frozenset[str]]:
        """(service → dataplanes that get its cluster and endpoints, dataplanes that get every service's): whose
        config a change of one service's endpoints or outbound policies can reach. Transparent proxies without
        `reachableServices`/`reachableBackends` reach every service and sit in the second set, so this stays O(N),
        not O(N × S)."""
        by: dict[str, set[str]] = {}
        everything: set[str] = set()
        for dp in self.dataplanes:
            tp = dp.networking.transparent_proxying
            limited = tp.reachable_mesh_services() if tp is not None else None
            if tp is not None and limited is None:
                everything.add(dp.name)
                continue
            wanted = limited if limited is not None else [ob.service for ob in dp.networking.outbound]
            for service in wanted:
                if service:
                    by.setdefault(service, set()).add(dp.name)
        return {s: frozenset(n) for s, n in by.items()}, frozenset(everything)

    @cached_property
    def tag_shape(self) -> frozenset[tuple[str, tuple[tuple[str, str], ...]]]:
        """Every distinct (service, inbound tags) of the mesh. What subset targetRefs, peer sets, zones and service
        protocols are resolved from: a dataplane change that leaves it alone can only reach its own config and the
        consumers of its services' endpoints."""
        return frozenset((ib.service, tuple(sorted(ib.tags.items())))
                         for dp in self.dataplanes for ib in dp.networking.inbound)

    def dp_memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Like `memo`, for values derived from the dataplanes (and mesh) only: these survive a policy-only change
        (see `with_policies`), so a policy change never re-walks the mesh's dataplanes."""
        try:
            return self._dp_memo[key]
        except KeyError:
            value = self._dp_memo[key] = build()
            return value

    def with_policies(self, policies: Mapping[str, Sequence[Any]], changed: frozenset[str] | None = None
                      ) -> MeshContext:
        """The same mesh with other policies, keeping everything derived from the dataplanes (service maps, the
        serialised shared clusters and endpoints, `dp_memo`): what makes a policy change cost what it touches.
        `changed` names the kinds whose policies differ; the matching of the other kinds is kept too (their
        selections do not depend on another kind's policies)."""
        new = MeshContext(self.mesh, self.dataplanes, policies, self.trust_bundle, self.vips)
        for name in _DATAPLANE_DERIVED:
            if name in self.__dict__:
                new.__dict__[name] = self.__dict__[name]
        cache = self.__dict__.get("match_cache")
        if changed is not None and cache:
            new.__dict__["match_cache"] = {k: v for k, v in cache.items() if _match_kind(k) not in changed}
        return new

    @cached_property
    def match_cache(self) -> dict[Hashable, Any]:
        """Shared matching results of proxies selected by the same policies (see matching.match)."""
        return {}

    def memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Any value derived from this (immutable) context only, computed once however many proxies ask: e.g. a
        route policy's endpoints of a tag subset, which otherwise walks every dataplane once per proxy."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = build()
            return value

    @cached_property
    def shared_resources(self) -> Mapping[str, Mapping[str, Resource]]:
        """The mesh-wide part (every service's cluster and endpoints, the trust bundle), serialised once per
        context and handed to every proxy that calls the service."""
        return {t: {n: Resource(n, m, t) for n, m in by.items()} for t, by in generate_shared(self).items()}

    def shared(self, key: Hashable, type_url: str, name: str, build: Callable[[], Message]) -> Resource:
        """The Resource for `key`, built and serialised once per context however many proxies ask for it.
        `key` must capture every input of `build` (e.g. (kind, service, effective conf as sorted JSON))."""
        return self.memo(key, lambda: Resource(name, build(), type_url))  # type: ignore[no-any-return]

    def dp_shared(self, key: Hashable, type_url: str, name: str, build: Callable[[], Message]) -> Resource:
        """`shared` for a resource built from the dataplanes only: it survives policy-only changes."""
        return self.dp_memo(key, lambda: Resource(name, build(), type_url))  # type: ignore[no-any-return]

    def outbound_capture(self, port: int, reachable: tuple[str, ...], ipv6: bool = False) -> Resource:
        """The outbound capture listener, once per (port, reachable set): with 1,000 tproxy proxies in a mesh it
        is otherwise rebuilt (and serialised) 1,000 times from the same inputs."""
        return self.dp_shared((OUTBOUND_PASSTHROUGH, port, reachable, ipv6), LISTENER, OUTBOUND_PASSTHROUGH,
                           lambda: outbound_capture_listener(port, reachable, self.service_protocols, self.vips,
                                                             self.service_addresses, self.service_ports, ipv6=ipv6))

    def dynconf(self, reachable: tuple[str, ...]) -> Resource:
        """The agent's dynconf listener (DNS table of the reachable services), once per reachable set."""
        return self.dp_shared((DYNCONF_LISTENER, reachable), LISTENER, DYNCONF_LISTENER,
                           lambda: dynconf_listener({DYNCONF_DNS_PATH: dns_table(self.vips, reachable)}))


# cached_property names of MeshContext that read only mesh, dataplanes, trust bundle and VIPs (never policies).
_DATAPLANE_DERIVED = ("service_protocols", "service_addresses", "service_ports", "shared_resources", "_dp_memo",
                      "by_service", "consumers", "tag_shape")


def _match_kind(key: Hashable) -> str:
    """The policy kind a matching.match cache key belongs to: (kind, selection) or ("select-index", kind)."""
    if isinstance(key, tuple) and len(key) == 2:
        return str(key[1] if key[0] == "select-index" else key[0])
    return ""


def generate_shared(ctx: MeshContext) -> dict[str, dict[str, Message]]:
    """Per-service EDS clusters, their endpoints and the trust bundle: identical for every proxy in the mesh."""
    clusters, assignments, routes = shared_clusters(ctx)
    out: dict[str, dict[str, Message]] = {CLUSTER: dict(clusters), ENDPOINT: dict(assignments), ROUTE: dict(routes)}
    if mtls_enabled(ctx.mesh) and ctx.trust_bundle:
        out[SECRET] = {MESH_CA: mesh_ca_secret(ctx.trust_bundle)}
    return out


@dataclass(frozen=True)
class Proxy:
    """One proxy as generation sees it: every registered kind has an entry in `matched` and `rules`."""

    dp: Dataplane
    matched: Mapping[str, Matched]
    rules: Mapping[str, Rules]

    @property
    def warnings(self) -> list[str]:
        return [w for r in self.rules.values() for w in (*r.warnings, *r.generation_warnings())]


def build_proxy(ctx: MeshContext, dp: Dataplane) -> Proxy:
    """Match every kind's policies to `dp` and let each plugin turn them into rules, in registry order."""
    matched: dict[str, Matched] = {}
    rules: dict[str, Rules] = {}
    for plugin in PLUGINS:
        m = match(plugin.kind, ctx.parsed_policies.get(plugin.kind, ()), dp, cache=ctx.match_cache)
        matched[plugin.kind] = m
        rules[plugin.kind] = plugin.rules(ctx, dp, m)
    return Proxy(dp, matched, rules)
