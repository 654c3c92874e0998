"""Matched MeshLoadBalancingStrategies → per destination service, the merged conf (JSON merge patch of the `to[]`
defaults that reach it, lowest priority first) and its typed form. Computed once per mesh change for every proxy
with the same matched items; the xDS side memoises the resources on (service, effective conf)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Item, Matched, ToIndex
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshloadbalancingstrategy.api import KIND, SHAPE, Conf, to_conf, validate_conf
from dpagent.model.dataplane import Dataplane
from dpagent.model.validation import Violations

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 400
ZONE_TAG = "kuma.io/zone"


@dataclass(frozen=True)
class Effective:
    """One destination's merged conf; `key` (sorted JSON) identifies it in memo keys, so proxies whose policies
    differ but merge to the same conf still share one cluster."""

    conf: Conf
    raw: dict[str, Any]
    key: str


@dataclass(frozen=True)
class LbRules(Rules):
    items: tuple[Item, ...] = ()
    zone: str = ""  # the client's kuma.io/zone tag ("" when it has none)
    index: ToIndex | None = None  # `items` by destination, shared by proxies with the same policies

    def __post_init__(self) -> None:
        if self.index is None and self.items:
            object.__setattr__(self, "index", ToIndex(self.items))

    def _mine(self, service: str) -> tuple[Item, ...]:
        """The items that reach `service`, lowest priority first: Mesh, or MeshService by name."""
        return self.index.for_service(service) if self.index is not None else ()

    def for_service(self, ctx: MeshView, service: str) -> Effective | None:
        index = self.index
        if index is None or not index.for_service(service):
            return None

        def build() -> Effective:
            raw = index.conf(service)
            return Effective(to_conf(raw), raw, json.dumps(raw, sort_keys=True))

        return index.derived(KIND, service, build)  # type: ignore[no-any-return]

    def outbound_conf(self, service: str) -> Any:
        mine = self._mine(service)
        return merge_confs(i.conf for i in mine) if mine else None


def _warnings(items: tuple[Item, ...]) -> list[str]:
    out = []
    for i in items:
        la = i.conf.get("localityAwareness") or {}
        if (la.get("localZone") or {}).get("affinityTags"):
            out.append(f"{KIND} {i.policy}: localityAwareness.localZone.affinityTags is not applied yet (endpoints "
                       "are prioritised by kuma.io/zone only)")
        if la.get("crossZone"):
            out.append(f"{KIND} {i.policy}: localityAwareness.crossZone is not applied yet (other zones share one "
                       "lower priority)")
    return out


def _zone(dp: Dataplane) -> str:
    for ib in dp.networking.inbound:
        if ib.tags.get(ZONE_TAG):
            return ib.tags[ZONE_TAG]
    return ""


class MeshLoadBalancingStrategyPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshloadbalancingstrategies"
    aliases = ("mlbs",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Violations, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> LbRules:
        if not matched.to:
            return LbRules()
        key = (KIND, "warnings", matched.to_index.key)
        warnings = ctx.memo(key, lambda: _warnings(matched.to))
        return LbRules(warnings=tuple(dict.fromkeys(warnings)), items=matched.to, zone=_zone(dp),
                       index=matched.to_index)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshloadbalancingstrategy import xds

        if isinstance(rules, LbRules) and rules.items:
            xds.configure(rs, ctx, rules)
