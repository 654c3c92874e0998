"""Matched MeshRateLimits → the effective local limits of each inbound.

Every `from[Mesh]` entry and catch-all `rules[]` entry selecting an inbound is merged, least specific first, so
a more specific policy overrides a field (a rate as a whole) and `disabled: true` switches a limit off. Each proxy
keeps its own bucket: three replicas limited to 100 req/s admit 300 req/s in total, as in Kuma.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshratelimit.api import KIND, SHAPE, Local, parse_conf, validate_conf
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 900


@dataclass(frozen=True)
class MrlRules(Rules):
    inbounds: Mapping[str, Local] = field(default_factory=dict)

    def inbound_conf(self, key: str) -> Any:
        return self.inbounds.get(key)


class MeshRateLimitPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshratelimits"
    aliases = ("mrl",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MrlRules:
        inbounds: dict[str, Local] = {}
        for key, ib in matched.inbounds.items():
            # A rate needs both num and interval, so the field-wise merge replaces a rate as a whole (Kuma).
            confs = [i.conf for i in (*ib.from_, *ib.rules)]
            local = parse_conf(merge_confs(confs)).local if confs else None
            if local is not None and (local.http is not None or local.tcp is not None):
                inbounds[key] = local
        return MrlRules(inbounds=inbounds)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshratelimit import xds  # Envoy protos only when generating

        if isinstance(rules, MrlRules) and rules.inbounds:
            xds.configure(rs, rules.inbounds)
