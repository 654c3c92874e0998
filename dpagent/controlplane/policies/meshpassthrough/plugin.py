"""Matched MeshPassthroughs → this proxy's effective passthrough: the merged `default` (appendMatch concatenated in
priority order). With no policy, the Mesh's `networking.outbound.passthrough: false` means mode None (default deny
for traffic leaving the mesh); a policy overrides that flag, as in Kuma."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshpassthrough.api import KIND, NONE, SHAPE, Match, parse_conf, validate_conf
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 500


@dataclass(frozen=True)
class PassthroughRules(Rules):
    """`mode` None: leave the capture listener as generated (passthrough for everything)."""

    mode: str | None = None
    matches: tuple[Match, ...] = ()


def mesh_passthrough(mesh: Mesh) -> bool:
    """Kuma's `networking.outbound.passthrough` (default true)."""
    outbound = (mesh.networking or {}).get("outbound")
    value = outbound.get("passthrough") if isinstance(outbound, Mapping) else None
    return value is not False


class MeshPassthroughPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshpassthroughs"
    aliases = ("mp",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> PassthroughRules:
        tproxy = dp.networking.transparent_proxying is not None
        if not matched.policies:
            return PassthroughRules(mode=None if mesh_passthrough(ctx.mesh) else NONE)
        conf = parse_conf(matched.default)
        warnings = () if tproxy else (f"{KIND} {', '.join(matched.policies)}: needs transparent proxying; this "
                                      "proxy has none, so it is not applied",)
        return PassthroughRules(warnings=warnings, mode=conf.passthrough_mode or NONE, matches=conf.append_match)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        if not isinstance(rules, PassthroughRules) or rules.mode is None:
            return
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshpassthrough import xds

        xds.configure(rs, ctx, rules.mode, rules.matches)
