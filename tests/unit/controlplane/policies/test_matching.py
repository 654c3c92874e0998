"""Generic matching and merging (Kuma §1.4-1.6) with a synthetic policy kind, so every section is exercised even
before a real plugin uses it: to[] order and merge, rules[] catch-all merge, single `default`, origin labels."""

from __future__ import annotations

from typing import Any

from dpagent.controlplane.policies.envelope import DEFAULT, FROM, RULES, TO, Policy, Shape, parse_policy
from dpagent.controlplane.policies.matching import match
from dpagent.model.dataplane import parse_dataplane

SHAPE = Shape(sections=(TO, FROM, RULES, DEFAULT))
DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "labels": {"app": "web"},
                      "networking": {"address": "10.0.0.1", "inbound": [
                          {"port": 80, "tags": {"kuma.io/service": "web"}},
                          {"port": 81, "name": "admin", "tags": {"kuma.io/service": "web-admin"}}]}})


def pol(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> Policy:
    doc = {"type": "MeshX", "mesh": "default", "name": name, "spec": spec, **({"labels": labels} if labels else {})}
    return parse_policy("MeshX", SHAPE, lambda v, conf, path, section: None, doc)


def to(kind: str, conf: dict[str, Any], name: str = "") -> dict[str, Any]:
    return {"targetRef": {"kind": kind, **({"name": name} if name else {})}, "default": conf}


def test_to_kind_outranks_policy_name() -> None:
    """A MeshService to-entry beats a Mesh one even when the Mesh one's policy name sorts first (step 5 < 6)."""
    m = match("MeshX", [pol("b", {"to": [to("MeshService", {"t": "svc", "list": [1]}, "backend")]}),
                        pol("a", {"to": [to("Mesh", {"t": "mesh", "list": [1, 2], "keep": True}, "")]})], DP)
    assert m.to_conf("backend") == {"t": "svc", "list": [1], "keep": True}  # lists replaced whole
    assert m.to_conf("other") == {"t": "mesh", "list": [1, 2], "keep": True}
    assert [i.policy for i in m.to_items("backend")] == ["a", "b"]


def test_more_specific_top_level_wins_and_alphabetically_smaller_name_wins_ties() -> None:
    m = match("MeshX", [pol("dp", {"targetRef": {"kind": "Dataplane", "labels": {"app": "web"}},
                                   "default": {"x": "dp"}}),
                        pol("zz", {"default": {"x": "zz", "y": 1}}),
                        pol("aa", {"default": {"x": "aa", "z": None}})], DP)
    assert m.policies == ("zz", "aa", "dp")
    assert m.default == {"x": "dp", "y": 1}


def test_origin_label_orders_global_before_unlabelled_before_zone() -> None:
    m = match("MeshX", [pol("a", {"default": {"x": "zone"}}, {"kuma.io/origin": "zone"}),
                        pol("b", {"default": {"x": "plain"}}),
                        pol("c", {"default": {"x": "global"}}, {"kuma.io/origin": "global"})], DP)
    assert m.policies == ("c", "b", "a") and m.default == {"x": "zone"}


def test_inbound_entries_only_on_the_inbounds_selected() -> None:
    m = match("MeshX", [pol("all", {"rules": [{"default": {"a": 1, "b": 1}}]}),
                        pol("admin", {"targetRef": {"kind": "Dataplane", "sectionName": "admin"},
                                      "rules": [{"default": {"b": 2}}],
                                      "from": [{"targetRef": {"kind": "Mesh"}, "default": {"c": 3}}]})], DP)
    web, admin = m.inbounds["10.0.0.1:80"], m.inbounds["10.0.0.1:81"]
    assert web.policies == ("all",) and web.rules_conf() == {"a": 1, "b": 1} and not web.from_
    assert admin.policies == ("all", "admin") and admin.rules_conf() == {"a": 1, "b": 2}
    assert [i.conf for i in admin.from_] == [{"c": 3}]


def test_policy_selecting_nothing_is_not_matched() -> None:
    m = match("MeshX", [pol("x", {"targetRef": {"kind": "Dataplane", "labels": {"app": "db"}},
                                  "default": {"x": 1}})], DP)
    assert m.policies == () and m.default == {} and all(not i.policies for i in m.inbounds.values())
