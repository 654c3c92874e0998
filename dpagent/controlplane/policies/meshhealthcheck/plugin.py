"""Matched MeshHealthChecks → the effective conf per destination service (`to[]`, merged least → most
specific). Health checks are outbound only: the client's proxy checks each instance of the destination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshhealthcheck.api import KIND, SHAPE, validate_conf
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1200


@dataclass(frozen=True)
class MhcRules(Rules):
    matched: Matched | None = None

    def for_service(self, service: str) -> dict[str, Any]:
        return self.matched.to_conf(service) if self.matched is not None else {}

    def outbound_conf(self, service: str) -> Any:
        return self.for_service(service) or None


class MeshHealthCheckPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshhealthchecks"
    aliases = ("mhc",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MhcRules:
        return MhcRules(matched=matched if matched.to else None)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshhealthcheck import xds

        if isinstance(rules, MhcRules) and rules.matched is not None:
            xds.configure(rs, ctx, rules)
