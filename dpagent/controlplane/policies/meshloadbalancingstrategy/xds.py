"""MeshLoadBalancingStrategy → the proxy's outbound clusters (balancer), their endpoints (local zone first) and,
for HTTP destinations, the outbound RouteConfiguration the proxy ends up with (hash policies; it may be the
route-free one or a MeshHTTPRoute's, both arrive shared). Every edited resource is built and serialised once per
(input resource, effective conf) per mesh change, so proxies with the same conf keep sharing bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshloadbalancingstrategy import lb
from dpagent.controlplane.policies.meshloadbalancingstrategy.api import KIND
from dpagent.controlplane.policies.meshloadbalancingstrategy.plugin import ZONE_TAG, LbRules
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, ROUTE, Resource


def _endpoint_zones(ctx: MeshView) -> Mapping[tuple[str, int], str]:
    """(address, port) → kuma.io/zone of the inbound serving there, once per mesh change."""
    def build() -> dict[tuple[str, int], str]:
        out = {}
        for dp in ctx.dataplanes:
            for ib in dp.networking.inbound:
                zone = ib.tags.get(ZONE_TAG)
                if zone:
                    out[(ib.address or dp.networking.address, ib.port)] = zone
        return out

    return ctx.dp_memo((KIND, "zones"), build)  # type: ignore[no-any-return]


def _edit(rs: ResourceSet, ctx: MeshView, entry: Entry, key: tuple[object, ...],
          build: Callable[[Any], Message | None]) -> None:
    """Swap in the shared result for (input, key); a private input (edited by an earlier plugin) is edited alone."""
    if entry.shared is None:
        result = build(entry.message)
        if result is not None:
            rs.replace(entry, result)
        return
    source = entry.shared
    value = ctx.memo((KIND, entry.type_url, source.digest, *key), lambda: _resource(entry.name, entry.type_url,
                                                                                 build(source.message)))
    if value is not None:
        rs.replace(entry, value)


def _resource(name: str, type_url: str, message: Message | None) -> Resource | None:
    return None if message is None else Resource(name, message, type_url)


def configure(rs: ResourceSet, ctx: MeshView, rules: LbRules) -> None:
    for entry in list(rs.entries(CLUSTER, Origin.OUTBOUND)):
        eff = rules.for_service(ctx, entry.service) if entry.service else None
        if eff is not None and eff.conf.load_balancer is not None:
            _edit(rs, ctx, entry, ("lb", eff.key), lambda m, c=eff.conf: lb.with_load_balancer(m, c))
    if rules.zone:
        zones = _endpoint_zones(ctx)
        for entry in list(rs.entries(ENDPOINT, Origin.OUTBOUND)):
            eff = rules.for_service(ctx, entry.service) if entry.service else None
            if eff is not None and eff.conf.locality_enabled():
                factor = lb.overprovisioning(eff.conf)
                _edit(rs, ctx, entry, ("zone", rules.zone, factor),
                      lambda m, f=factor: lb.by_zone(m, zones, rules.zone, f))
    for entry in list(rs.entries(ROUTE, Origin.OUTBOUND)):
        eff = rules.for_service(ctx, entry.service) if entry.service else None
        policies = eff.conf.effective_hash_policies() if eff is not None else ()
        if policies:
            _edit(rs, ctx, entry, ("hash", eff.key), lambda m, p=policies: lb.with_hash_policies(m, p))  # type: ignore[union-attr]
