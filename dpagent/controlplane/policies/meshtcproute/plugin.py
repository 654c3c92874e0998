"""Matched MeshTCPRoutes → per destination service, the `to[].rules` lists that shape its outbound tcp_proxy
(lowest priority first), and which destinations a MeshHTTPRoute already shapes: MeshHTTPRoute wins there (§3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.matching import Item, Matched, match
from dpagent.controlplane.policies.meshroute.refs import BackendRef, rules_by_destination
from dpagent.controlplane.policies.meshtcproute.api import (
    KIND,
    SHAPE,
    Rule,
    parse_meshtcproute,
    to_rules,
    validate_meshtcproute,
)
from dpagent.controlplane.policies.targetref import MESH_HTTP_ROUTE
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 200


@dataclass(frozen=True)
class TcpRouteRules(Rules):
    by_service: Mapping[str, tuple[tuple[Rule, ...], ...]] = field(default_factory=dict)
    http_routed: frozenset[str] = frozenset()  # destinations a MeshHTTPRoute shapes for this proxy

    def outbound_conf(self, service: str) -> Any:
        from dpagent.controlplane.policies.meshtcproute.tcp import effective_rule

        lists = self.by_service.get(service)
        rule = effective_rule(lists) if lists else None
        return None if rule is None else msgspec.to_builtins(rule)


def _refs(rules: tuple[Rule, ...]) -> list[tuple[str, BackendRef]]:
    return [(f"rules[{j}].default.backendRefs[{k}]", r) for j, rule in enumerate(rules)
            for k, r in enumerate(rule.default.backend_refs)]


def _http_routed(ctx: MeshView, dp: Dataplane) -> frozenset[str]:
    """Destinations some MeshHTTPRoute selecting `dp` gives rules to (the kinds are independent plugins, so this
    one matches the other's policies itself; only done for a proxy that has a MeshTCPRoute at all)."""
    from dpagent.controlplane.policies.meshhttproute.api import to_rules as http_rules

    parsed = getattr(ctx, "parsed_policies", {}).get(MESH_HTTP_ROUTE, ())  # xds.context.MeshContext has them
    if not parsed:
        return frozenset()
    routed = rules_by_destination(match(MESH_HTTP_ROUTE, parsed, dp).to, lambda i: http_rules(i.conf))
    return frozenset(s for s, lists in routed.items() if any(lists))


class MeshTCPRoutePlugin(PolicyPlugin):
    kind = KIND
    plural = "meshtcproutes"
    aliases = ("mtcpr",)
    order = ORDER
    shape = SHAPE

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        return validate_meshtcproute(doc)

    def parse(self, doc: Any) -> Policy:
        return doc if isinstance(doc, Policy) else parse_meshtcproute(doc)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> TcpRouteRules:
        from dpagent.controlplane.policies.meshroute.warnings import item_warnings

        def typed(item: Item) -> tuple[Rule, ...]:
            return ctx.memo((KIND, "rules", item.policy, item.index), lambda: to_rules(item.conf))  # type: ignore[no-any-return]

        by_service = {s: tuple(lists) for s, lists in rules_by_destination(matched.to, typed).items() if any(lists)}
        warnings = [w for item in matched.to for w in ctx.memo(
            (KIND, "warnings", item.policy, item.index), lambda item=item: item_warnings(KIND, ctx, item,
                                                                                        _refs(typed(item))))]
        http = _http_routed(ctx, dp) if by_service else frozenset()
        return TcpRouteRules(warnings=tuple(dict.fromkeys(warnings)), by_service=by_service, http_routed=http)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshtcproute import xds

        if isinstance(rules, TcpRouteRules) and rules.by_service:
            xds.configure(rs, ctx, rules)
