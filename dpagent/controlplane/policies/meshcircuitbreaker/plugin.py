"""Matched MeshCircuitBreakers → the effective conf per destination service (`to[]`, merged least → most specific)
and per inbound (`from[]` entries are catch-all rules, as Kuma's is_from_as_rules kinds treat them, merged with
`rules[]` in policy priority order)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshcircuitbreaker.api import (
    KIND,
    SHAPE,
    default_policy,
    validate_conf,
)
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1300


@dataclass(frozen=True)
class McbRules(Rules):
    """`matched` answers per destination (a route's split clusters name services the dataplane does not list);
    `inbounds` holds the merged conf of every inbound some policy configures, keyed by address:port."""

    matched: Matched | None = None
    inbounds: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def for_service(self, service: str) -> dict[str, Any]:
        return self.matched.to_conf(service) if self.matched is not None else {}

    def keyed(self, service: str) -> tuple[str, dict[str, Any]] | None:
        """(the conf as sorted JSON, the conf) toward `service`, computed once per selection and destination."""
        if self.matched is None:
            return None
        index = self.matched.to_index

        def build() -> tuple[str, dict[str, Any]] | None:
            conf = index.conf(service)
            return (json.dumps(conf, sort_keys=True), conf) if conf else None

        return index.derived("MeshCircuitBreaker", service, build)  # type: ignore[no-any-return]

    def outbound_conf(self, service: str) -> Any:
        return self.for_service(service) or None

    def inbound_conf(self, key: str) -> Any:
        return self.inbounds.get(key)


class MeshCircuitBreakerPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshcircuitbreakers"
    aliases = ("mcb",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def initial_policies(self, mesh: str) -> list[dict[str, Any]]:
        return [default_policy(mesh)]

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> McbRules:
        inbounds = {}
        for key, ib in matched.inbounds.items():
            items = sorted((*ib.from_, *ib.rules), key=lambda i: (i.rank, i.index))
            conf = merge_confs(i.conf for i in items)
            if conf:
                inbounds[key] = conf
        return McbRules(matched=matched if matched.to else None, inbounds=inbounds)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshcircuitbreaker import xds

        if isinstance(rules, McbRules) and (rules.matched is not None or rules.inbounds):
            xds.configure(rs, ctx, rules)
