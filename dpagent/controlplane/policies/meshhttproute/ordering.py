"""How the rules of several MeshHTTPRoutes for one destination become one ordered route list (reference
kuma-policies.md §2.2 and §2.3 step 3). Pure functions over typed rules, so the order is testable on its own.

1. `merge_rules`: rules with deep-equal `matches` are one rule; their `default`s fold by JSON merge patch from the
   lowest-priority policy to the highest (lists such as `filters` and `backendRefs` are replaced whole). The merged
   list starts with the highest-priority policy's rules; a merged rule keeps the place of its highest-priority
   occurrence.
2. `route_entries`: one entry per (rule, match), stable-sorted by Gateway API precedence, then a catch-all
   `PathPrefix /` to the destination itself unless some entry already has exactly that match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshhttproute.api import (
    EXACT,
    PATH_PREFIX,
    Match,
    PathMatch,
    Rule,
    RuleConf,
    to_rules,
)
from dpagent.controlplane.policies.meshroute.refs import rules_by_destination

CATCH_ALL = Match(path=PathMatch(type=PATH_PREFIX, value="/"))
_PATH_RANK = {EXACT: 0, PATH_PREFIX: 1}  # RegularExpression (and anything else) ranks last


@dataclass(frozen=True)
class RouteEntry:
    """One Envoy route to build: a single match, the merged conf of its rule, and the rule's whole `matches`
    (its identity: the route name, and whether every match is a PathPrefix)."""

    match: Match
    conf: RuleConf
    rule_matches: tuple[Match, ...]


def _key(matches: tuple[Match, ...]) -> bytes:
    return msgspec.json.encode(matches)


def destination_rules(matched: Matched, service: str) -> list[tuple[Rule, ...]]:
    """The `to[].rules` lists of the matched policies that reach the legacy destination `service`, lowest
    priority first."""
    return rules_by_destination(matched.to, lambda i: to_rules(i.conf)).get(service, [])


def merge_rules(rule_lists: Sequence[Sequence[Rule]]) -> list[Rule]:
    """`rule_lists`: each matched policy's `to[].rules` for this destination, lowest priority first (the order
    policies are sorted in, §1.5). Within one policy a later rule with the same matches wins."""
    confs: dict[bytes, list[dict[str, Any]]] = {}
    matches: dict[bytes, tuple[Match, ...]] = {}
    for rules in rule_lists:
        for rule in rules:
            key = _key(rule.matches)
            matches.setdefault(key, rule.matches)
            confs.setdefault(key, []).append(msgspec.to_builtins(rule.default))
    order: list[bytes] = []
    seen: set[bytes] = set()
    for rules in reversed(rule_lists):
        for rule in rules:
            key = _key(rule.matches)
            if key not in seen:
                seen.add(key)
                order.append(key)
    return [Rule(matches=matches[k], default=msgspec.convert(merge_confs(confs[k]), RuleConf)) for k in order]


def precedence(match: Match) -> tuple[int, ...]:
    """Sort key, most specific first: with a path before without; Exact, then PathPrefix (longer first), then
    RegularExpression (longer first); with a method before without; more header, then more query matches first."""
    if match.path is None:
        path: tuple[int, int, int] = (1, 0, 0)
    else:
        rank = _PATH_RANK.get(match.path.type, 2)
        path = (0, rank, 0 if rank == 0 else -len(match.path.value))
    return (*path, 0 if match.method else 1, -len(match.headers), -len(match.query_params))


def route_entries(rules: Sequence[Rule]) -> list[RouteEntry]:
    """Merged rules (see merge_rules) → the ordered entries of the destination's virtual host."""
    entries = [RouteEntry(m, rule.default, rule.matches) for rule in rules for m in rule.matches]
    entries.sort(key=lambda e: precedence(e.match))  # stable: ties keep the merged order
    if not any(e.match == CATCH_ALL for e in entries):
        entries.append(RouteEntry(CATCH_ALL, RuleConf(), (CATCH_ALL,)))
    return entries
