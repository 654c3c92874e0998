"""Matched MeshTimeouts → effective timeouts per destination (`to[]`, merged lowest priority first) and per inbound
(`from[]` entries act as catch-all `rules[]` for this kind, Kuma's is_from_as_rules). A destination or inbound no
MeshTimeout reaches keeps the generator's config untouched, as Kuma leaves it; one that is reached gets Kuma's
default for every field the policies leave unset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Item, Matched, ToIndex
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshtimeout.api import (
    KIND,
    SHAPE,
    Timeouts,
    effective,
    initial_policies,
    to_timeouts,
    validate_conf,
    view,
)
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1000


@dataclass(frozen=True)
class TimeoutRules(Rules):
    """`to`: the matched to[] items, lowest priority first (a destination's conf is computed on demand, so a
    transparent proxy reaching every service pays only for the services it has clusters for); `inbounds`: the
    effective timeouts per inbound key, only for inbounds some MeshTimeout reaches."""

    to: tuple[Item, ...] = ()
    inbounds: Mapping[str, Timeouts] = field(default_factory=dict)
    index: ToIndex | None = None  # `to` indexed by destination, shared by proxies with the same policies

    def __post_init__(self) -> None:
        if self.index is None and self.to:
            object.__setattr__(self, "index", ToIndex(self.to))

    def outbound(self, service: str) -> Timeouts | None:
        to = self.index
        if to is None:
            return None
        return to.derived(KIND, service, lambda: effective(to_timeouts(to.conf(service)))
                          if to.for_service(service) else None)

    def outbound_conf(self, service: str) -> Any:
        t = self.outbound(service)
        return None if t is None else view(t)

    def inbound_conf(self, key: str) -> Any:
        t = self.inbounds.get(key)
        return None if t is None else view(t)


class MeshTimeoutPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshtimeouts"
    aliases = ("mt",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def initial_policies(self, mesh: str) -> list[dict[str, Any]]:
        return initial_policies(mesh)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> TimeoutRules:
        inbounds: dict[str, Timeouts] = {}
        for key, ib in matched.inbounds.items():
            items = sorted((*ib.from_, *ib.rules), key=lambda i: (i.rank, i.index))
            if items:
                inbounds[key] = effective(to_timeouts(merge_confs(i.conf for i in items)))
        return TimeoutRules(to=matched.to, inbounds=inbounds, index=matched.to_index if matched.to else None)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshtimeout import xds

        if isinstance(rules, TimeoutRules) and (rules.to or rules.inbounds):
            xds.configure(rs, ctx, dp, rules)
