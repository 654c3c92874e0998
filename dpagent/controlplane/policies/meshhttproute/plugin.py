"""Matched MeshHTTPRoutes → per destination service, the `to[].rules` lists that shape its outbound route, lowest
priority first (merging and ordering them is ordering.py's job, at build time)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.matching import Item, Matched
from dpagent.controlplane.policies.meshhttproute.api import (
    KIND,
    SHAPE,
    Rule,
    parse_meshhttproute,
    to_rules,
    validate_meshhttproute,
)
from dpagent.controlplane.policies.meshroute.refs import BackendRef, rules_by_destination
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 100
ItemKey = tuple[str, int]  # (policy name, to[] index): identifies a matched to[] item within the mesh and kind


@dataclass(frozen=True)
class Destination:
    """The rules that shape one destination's route, and the identity of the items they came from (the memo key
    of the built route: every proxy with the same items shares one serialised RouteConfiguration)."""

    rules: tuple[tuple[Rule, ...], ...]
    items: tuple[ItemKey, ...]


@dataclass(frozen=True)
class HttpRouteRules(Rules):
    by_service: Mapping[str, Destination] = field(default_factory=dict)

    def outbound_conf(self, service: str) -> Any:
        from dpagent.controlplane.policies.meshhttproute.ordering import merge_rules

        dest = self.by_service.get(service)
        return None if dest is None else {"rules": msgspec.to_builtins(merge_rules(dest.rules))}


def _refs(rules: tuple[Rule, ...]) -> list[tuple[str, BackendRef]]:
    out = []
    for j, rule in enumerate(rules):
        conf = rule.default
        out.extend((f"rules[{j}].default.backendRefs[{k}]", r) for k, r in enumerate(conf.backend_refs or ()))
        out.extend((f"rules[{j}].default.filters[{k}].requestMirror.backendRef", f.request_mirror.backend_ref)
                   for k, f in enumerate(conf.filters or ()) if f.request_mirror is not None)
    return out


def destinations(ctx: MeshView, matched: Matched) -> tuple[dict[str, Destination], list[str]]:
    """Typed rules per destination plus the warnings of every matched item, computed once per mesh change for
    every proxy with the same matched items (a mesh-wide route set: once for the whole mesh)."""
    key = (KIND, "destinations", tuple((i.policy, i.index) for i in matched.to))
    return ctx.memo(key, lambda: _destinations(ctx, matched))  # type: ignore[no-any-return]


def _destinations(ctx: MeshView, matched: Matched) -> tuple[dict[str, Destination], list[str]]:
    def typed(item: Item) -> tuple[ItemKey, tuple[Rule, ...]]:
        key = (item.policy, item.index)
        return key, ctx.memo((KIND, "rules", key), lambda: to_rules(item.conf))

    def warned(item: Item) -> list[str]:
        from dpagent.controlplane.policies.meshroute.warnings import item_warnings

        key = (item.policy, item.index)
        return ctx.memo((KIND, "warnings", key),  # type: ignore[no-any-return]
                        lambda: item_warnings(KIND, ctx, item, _refs(to_rules(item.conf))))

    out = {}
    for service, pairs in rules_by_destination(matched.to, typed).items():
        pairs = [(k, r) for k, r in pairs if r]
        if pairs:
            out[service] = Destination(tuple(r for _, r in pairs), tuple(k for k, _ in pairs))
    warnings = [w for item in matched.to for w in warned(item)]
    return out, warnings


class MeshHTTPRoutePlugin(PolicyPlugin):
    kind = KIND
    plural = "meshhttproutes"
    aliases = ("mhttpr", "mhr")
    order = ORDER
    shape = SHAPE

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        return validate_meshhttproute(doc)

    def parse(self, doc: Any) -> Policy:
        return doc if isinstance(doc, Policy) else parse_meshhttproute(doc)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> HttpRouteRules:
        by_service, warnings = destinations(ctx, matched)
        return HttpRouteRules(warnings=tuple(dict.fromkeys(warnings)), by_service=by_service)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshhttproute import xds

        if isinstance(rules, HttpRouteRules) and rules.by_service:
            xds.configure(rs, ctx, rules.by_service)
