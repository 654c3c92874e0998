"""Matched MeshProxyPatches → this proxy's list of modifications: `appendModifications` of every policy selecting
the proxy, concatenated least specific first (merge.py appends `append*` lists), applied in that order last of all
plugins (Kuma order 9999), so a patch sees and can override what every other policy generated."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # what could not apply to this proxy's resources, filled by `apply` (the rules are built per proxy)
    problems: list[str] = field(default_factory=list, compare=False, hash=False)

    def needs_generation(self) -> bool:
        return bool(self.modifications)

    def generation_warnings(self) -> list[str]:
        return list(self.problems)


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
            rules.problems[:] = [f"{KIND}: {p}" for p in xds.apply_all(rs, ctx, dp, rules.modifications)]
