"""Matched MeshProxyPatches → this proxy's list of modifications: `appendModifications` of every policy selecting
the proxy, concatenated least specific first (merge.py appends `append*` lists), applied in that order last of all
plugins (Kuma order 9999), so a patch sees and can override what every other policy generated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshproxypatch.api import KIND, SHAPE, Modification, parse_conf, validate_conf
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 9999


@dataclass(frozen=True)
class PatchRules(Rules):
    modifications: tuple[Modification, ...] = ()

    def inbound_conf(self, key: str) -> Any:
        return None


class MeshProxyPatchPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshproxypatches"
    aliases = ("mpp",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> PatchRules:
        if not matched.policies:
            return PatchRules()
        return PatchRules(modifications=parse_conf(matched.default))

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshproxypatch import xds  # Envoy protos only when generating

        if isinstance(rules, PatchRules) and rules.modifications:
            xds.apply_all(rs, dp, rules.modifications)
