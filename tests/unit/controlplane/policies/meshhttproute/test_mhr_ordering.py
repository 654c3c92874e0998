"""How several MeshHTTPRoutes' rules for one destination merge (by equal `matches`, JSON merge patch, lists
replaced whole, highest-priority policy's rules first) and how the route entries sort (Gateway API precedence,
then the catch-all)."""

from __future__ import annotations

from typing import Any

import msgspec

from dpagent.controlplane.policies.meshhttproute.api import Match, Rule
from dpagent.controlplane.policies.meshhttproute.ordering import CATCH_ALL, merge_rules, precedence, route_entries


def rule(matches: list[dict[str, Any]] | dict[str, Any], **default: Any) -> Rule:
    return msgspec.convert({"matches": matches if isinstance(matches, list) else [matches], "default": default}, Rule)


def prefix(value: str) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}}


def backend(name: str, weight: int = 1, **tags: str) -> dict[str, Any]:
    kind = "MeshServiceSubset" if tags else "MeshService"
    return {"kind": kind, "name": name, "weight": weight, **({"tags": tags} if tags else {})}


HDR = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}


def plain(rules: list[Rule]) -> list[Any]:
    return msgspec.to_builtins(rules)


def test_equal_matches_merge_and_high_priority_rules_come_first() -> None:
    low = [rule(prefix("/a"), backendRefs=[backend("v1")]), rule(prefix("/b"), backendRefs=[backend("b")])]
    high = [rule(prefix("/c")), rule(prefix("/a"), filters=[HDR])]
    merged = merge_rules([low, high])
    assert [r.matches[0].path.value for r in merged if r.matches[0].path] == ["/c", "/a", "/b"]
    a = merged[1].default
    # the low policy's backends survive (the high one did not set any), the high one's filters are added
    assert [b.name for b in a.backend_refs or ()] == ["v1"]
    assert [f.type for f in a.filters or ()] == ["RequestHeaderModifier"]


def test_lists_are_replaced_whole_even_by_an_explicit_empty_list() -> None:
    low = [rule(prefix("/a"), backendRefs=[backend("x"), backend("y")], filters=[HDR])]
    high = [rule(prefix("/a"), backendRefs=[backend("z", 5)], filters=[])]
    (merged,) = merge_rules([low, high])
    assert [(b.name, b.weight) for b in merged.default.backend_refs or ()] == [("z", 5)]
    assert merged.default.filters == ()


def test_matches_compare_by_value_not_by_spelling() -> None:
    # `type: Exact` is the header default: writing it or not is the same match, so the rules merge
    low = [rule({"headers": [{"name": "x-v", "value": "2"}]}, backendRefs=[backend("old")])]
    high = [rule({"headers": [{"name": "x-v", "type": "Exact", "value": "2"}]}, backendRefs=[backend("new")])]
    (merged,) = merge_rules([low, high])
    assert [b.name for b in merged.default.backend_refs or ()] == ["new"]
    # different matches never merge
    assert len(merge_rules([[rule(prefix("/a"))], [rule(prefix("/a/b"))]])) == 2


def test_same_policy_duplicate_matches_later_rule_wins_at_first_place() -> None:
    rules = [rule(prefix("/a"), backendRefs=[backend("first")]), rule(prefix("/b")),
             rule(prefix("/a"), backendRefs=[backend("second")])]
    merged = merge_rules([rules])
    assert [r.matches[0].path.value for r in merged if r.matches[0].path] == ["/a", "/b"]
    assert [b.name for b in merged[0].default.backend_refs or ()] == ["second"]


def test_precedence_order() -> None:
    """Listed most specific first; sorting any shuffle of them must give this list back."""
    ordered = [
        {"path": {"type": "Exact", "value": "/a"}, "method": "GET"},
        {"path": {"type": "Exact", "value": "/zzzzzz"}, "headers": [{"name": "x"}]},  # Exact: length does not count
        {"path": {"type": "Exact", "value": "/a"}},
        {"path": {"type": "PathPrefix", "value": "/a/b/c"}},
        {"path": {"type": "PathPrefix", "value": "/a"}, "method": "POST", "headers": [{"name": "x"}]},
        {"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "x"}, {"name": "y"}]},
        {"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "x"}],
         "queryParams": [{"type": "Exact", "name": "q", "value": "1"}]},
        {"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "x"}]},
        {"path": {"type": "RegularExpression", "value": "^/long.*$"}},
        {"path": {"type": "RegularExpression", "value": "/s"}},
        {"method": "GET"},
        {"headers": [{"name": "x"}]},
        {},
    ]
    matches = [msgspec.convert(d, Match) for d in ordered]
    for shuffled in (list(reversed(matches)), matches[1::2] + matches[::2]):
        assert sorted(shuffled, key=precedence) == matches


def test_route_entries_sort_stably_and_append_the_catch_all() -> None:
    rules = [rule([prefix("/api"), {"path": {"type": "Exact", "value": "/login"}}], backendRefs=[backend("a")]),
             rule({"headers": [{"name": "x-beta", "value": "1"}]}, backendRefs=[backend("beta")]),
             rule(prefix("/api"), filters=[HDR])]  # same key as the first match above: tie keeps merged order
    entries = route_entries(rules)
    assert [(e.match.path.value if e.match.path else None) for e in entries] == ["/login", "/api", "/api", None, "/"]
    assert entries[1].rule_matches == rules[0].matches and entries[2].rule_matches == rules[2].matches
    assert entries[-1].match == CATCH_ALL and entries[-1].conf.backend_refs is None


def test_no_second_catch_all_when_a_rule_has_it() -> None:
    entries = route_entries([rule(prefix("/"), backendRefs=[backend("all")])])
    assert len(entries) == 1 and entries[0].match == CATCH_ALL
    assert [b.name for b in entries[0].conf.backend_refs or ()] == ["all"]
