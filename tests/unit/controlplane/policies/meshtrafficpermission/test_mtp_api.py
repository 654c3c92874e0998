"""MeshTrafficPermission validation (every violation with its path) and targetRef semantics."""

from __future__ import annotations

from typing import Any

import pytest

from dpagent.controlplane.policies.meshtrafficpermission import MeshTrafficPermissionPlugin
from dpagent.controlplane.policies.targetref import TargetRef, selects, sort_key
from dpagent.errors import ValidationError
from dpagent.model.dataplane import parse_dataplane

PLUGIN = MeshTrafficPermissionPlugin()
validate_meshtrafficpermission = PLUGIN.validate
parse_meshtrafficpermission = PLUGIN.parse
KINDS_MSG = "value is not supported (expected one of: Mesh, MeshSubset, MeshService, MeshServiceSubset)"
TOP_KINDS_MSG = "value is not supported (expected one of: Mesh, Dataplane, MeshSubset, MeshService, MeshServiceSubset)"


def mtp(spec: Any, **top: Any) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": "p", "spec": spec, **top}


def rule(ref: Any, action: Any = "Allow") -> dict[str, Any]:
    return {"targetRef": ref, "default": {"action": action}}


def test_valid_and_parsed_defaults() -> None:
    doc = mtp({"from": [rule({"kind": "Mesh"}, "AllowWithShadowDeny"),
                        rule({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}, "Deny")]})
    assert validate_meshtrafficpermission(doc) == []
    p = parse_meshtrafficpermission(doc)
    assert p.target_ref == TargetRef()
    assert [f.conf["action"] for f in p.from_] == ["AllowWithShadowDeny", "Deny"]
    assert p.from_[1].target_ref is not None and p.from_[1].target_ref.tags == {"version": "v1"}


BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("not object", "x", [("$", "must be an object, not a string")]),
    ("wrong type", mtp({"from": [rule({"kind": "Mesh"})]}, type="Mesh"),
     [("type", "must be MeshTrafficPermission, not 'Mesh'")]),
    ("no mesh/name", {"type": "MeshTrafficPermission", "spec": {"from": [rule({"kind": "Mesh"})]}},
     [("mesh", "must be defined"), ("name", "must be defined")]),
    ("unknown top", mtp({"from": [rule({"kind": "Mesh"})]}, x=1),
     [("x", "unknown field (expected one of: creationTime, labels, mesh, modificationTime, name, spec, type)")]),
    ("no spec", {"type": "MeshTrafficPermission", "mesh": "default", "name": "p"}, [("spec", "must be defined")]),
    ("spec unknown", mtp({"from": [rule({"kind": "Mesh"})], "to": []}),
     [("spec.to", "unknown field (expected one of: from, rules, targetRef)")]),
    ("empty from", mtp({"targetRef": {"kind": "Mesh"}}), [("spec", "needs at least one item in 'from' or 'rules'")]),
    ("from not list", mtp({"from": {}}), [("spec.from", "must be a list, not an object")]),
    ("item not object", mtp({"from": [3]}), [("spec.from[0]", "must be an object, not a number")]),
    ("item unknown", mtp({"from": [{**rule({"kind": "Mesh"}), "x": 1}]}),
     [("spec.from[0].x", "unknown field (expected one of: default, targetRef)")]),
    ("bad action", mtp({"from": [rule({"kind": "Mesh"}, "Permit")]}),
     [("spec.from[0].default.action", "must be one of: Allow, Deny, AllowWithShadowDeny")]),
    ("no action", mtp({"from": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
     [("spec.from[0].default.action", "must be defined")]),
    ("default unknown", mtp({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow", "y": 1}}]}),
     [("spec.from[0].default.y", "unknown field (expected one of: action)")]),
    ("no default", mtp({"from": [{"targetRef": {"kind": "Mesh"}}]}), [("spec.from[0].default", "must be defined")]),
    ("no from targetRef", mtp({"from": [{"default": {"action": "Allow"}}]}),
     [("spec.from[0].targetRef", "must be defined")]),
    ("no kind", mtp({"from": [rule({"name": "x"})]}), [("spec.from[0].targetRef.kind", "must be defined")]),
    ("bad kind", mtp({"from": [rule({"kind": "Dataplane"})]}), [("spec.from[0].targetRef.kind", KINDS_MSG)]),
    ("top bad kind", mtp({"targetRef": {"kind": "MeshGateway"}, "from": [rule({"kind": "Mesh"})]}),
     [("spec.targetRef.kind", TOP_KINDS_MSG)]),
    ("Mesh with name and tags", mtp({"from": [rule({"kind": "Mesh", "name": "x", "tags": {"a": "b"}})]}),
     [("spec.from[0].targetRef.name", "must not be set with kind Mesh"),
      ("spec.from[0].targetRef.tags", "must not be set with kind Mesh")]),
    ("MeshService no name", mtp({"targetRef": {"kind": "MeshService"}, "from": [rule({"kind": "Mesh"})]}),
     [("spec.targetRef.name", "must be defined")]),
    ("MeshService with tags", mtp({"from": [rule({"kind": "MeshService", "name": "a", "tags": {"a": "b"}})]}),
     [("spec.from[0].targetRef.tags", "must not be set with kind MeshService")]),
    ("MeshSubset no tags", mtp({"from": [rule({"kind": "MeshSubset"})]}),
     [("spec.from[0].targetRef.tags", "must be set with kind MeshSubset")]),
    ("MeshSubset with name", mtp({"from": [rule({"kind": "MeshSubset", "name": "a", "tags": {"a": "b"}})]}),
     [("spec.from[0].targetRef.name", "must not be set with kind MeshSubset")]),
    ("MeshServiceSubset needs both", mtp({"from": [rule({"kind": "MeshServiceSubset", "tags": {}})]}),
     [("spec.from[0].targetRef.name", "must be defined"),
      ("spec.from[0].targetRef.tags", "must be set with kind MeshServiceSubset")]),
    ("bad tag value", mtp({"from": [rule({"kind": "MeshSubset", "tags": {"a": ""}})]}),
     [('spec.from[0].targetRef.tags["a"]', "tag value must be a non-empty string")]),
    ("targetRef unknown", mtp({"from": [rule({"kind": "Mesh", "port": "x"})]}),
     [("spec.from[0].targetRef.port",
       "unknown field (expected one of: kind, labels, name, proxyTypes, sectionName, tags)")]),
    ("Mesh with sectionName", mtp({"from": [rule({"kind": "Mesh", "sectionName": "x"})]}),
     [("spec.from[0].targetRef.sectionName", "must not be set with kind Mesh")]),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in BAD], ids=[c for c, _, _ in BAD])
def test_violations(doc: Any, expected: list[tuple[str, str]]) -> None:
    assert validate_meshtrafficpermission(doc) == expected


def test_parse_raises_with_all() -> None:
    doc = mtp({"from": [rule({"kind": "Bogus"}, "Nope"), rule({"kind": "MeshService"})]})
    with pytest.raises(ValidationError) as err:
        parse_meshtrafficpermission(doc)
    assert len(err.value.violations) == 3


DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "dp", "networking": {"address": "10.0.0.1",
    "inbound": [{"port": 1, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 2, "tags": {"kuma.io/service": "metrics", "team": "ops"}}]}})


@pytest.mark.parametrize(("ref", "expected"), [
    (TargetRef(), True),
    (TargetRef("MeshSubset", tags={"version": "v1"}), True),
    (TargetRef("MeshSubset", tags={"version": "v1", "team": "ops"}), False),  # tags must be on one inbound
    (TargetRef("MeshService", "metrics"), True),
    (TargetRef("MeshService", "db"), False),
    (TargetRef("MeshServiceSubset", "web", {"version": "v1"}), True),
    (TargetRef("MeshServiceSubset", "metrics", {"version": "v1"}), False),
])
def test_selects(ref: TargetRef, expected: bool) -> None:
    assert selects(ref, DP) is expected


def test_specificity_order() -> None:
    refs = [("z", TargetRef("MeshServiceSubset", "a", {"x": "1"})), ("y", TargetRef("MeshService", "a")),
            ("b", TargetRef("MeshSubset", tags={"x": "1", "y": "2"})), ("a", TargetRef("MeshSubset", tags={"x": "1"})),
            ("c", TargetRef()), ("b", TargetRef())]
    ordered = sorted(refs, key=lambda r: sort_key(r[1], r[0]))
    # Kuma §1.5: kind first, tags do not count, and among equals the alphabetically smaller name has the higher
    # priority (sorts last).
    assert [(n, r.kind) for n, r in ordered] == [("c", "Mesh"), ("b", "Mesh"), ("b", "MeshSubset"),
                                                ("a", "MeshSubset"), ("y", "MeshService"), ("z", "MeshServiceSubset")]


def spiffe_rules(**lists: Any) -> dict[str, Any]:
    return mtp({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "main"},
                "rules": [{"default": lists}]})


def test_rules_form_and_dataplane_target_are_valid() -> None:
    doc = spiffe_rules(deny=[{"spiffeID": {"type": "Prefix", "value": "spiffe://default/job"}}],
                       allow=[{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"},
                               "sni": {"type": "Exact", "value": "backend.mesh"}}],
                       allowWithShadowDeny=[{"sni": {"type": "Exact", "value": "backend.mesh"}}])
    assert validate_meshtrafficpermission(doc) == []
    p = parse_meshtrafficpermission(doc)
    assert p.target_ref.kind == "Dataplane" and p.target_ref.labels == {"app": "backend"}
    assert p.target_ref.section_name == "main" and p.rules[0].conf["deny"][0]["spiffeID"]["type"] == "Prefix"


RULES_BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("empty default", spiffe_rules(), [("spec.rules[0].default", "must define at least one of: deny, allow, "
                                                                 "allowWithShadowDeny")]),
    ("empty match", spiffe_rules(allow=[{}]),
     [("spec.rules[0].default.allow[0]", "must define spiffeID and/or sni (an empty match would match every "
                                         "client)")]),
    ("bad spiffe", spiffe_rules(deny=[{"spiffeID": {"type": "Regex", "value": "http://x"}}]),
     [("spec.rules[0].default.deny[0].spiffeID.type", "must be one of: Exact, Prefix"),
      ("spec.rules[0].default.deny[0].spiffeID.value",
       "'http://x' is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")]),
    ("bad sni", spiffe_rules(allow=[{"sni": {"type": "Prefix", "value": "Not_A_Host"}}]),
     [("spec.rules[0].default.allow[0].sni.type", "must be Exact"),
      ("spec.rules[0].default.allow[0].sni.value", "'Not_A_Host' is not a lower-case DNS name")]),
    ("rule unknown", mtp({"rules": [{"matches": [], "default": {"allow": [{"sni": {"type": "Exact",
                                                                                    "value": "a"}}]}}]}),
     [("spec.rules[0].matches", "unknown field (expected one of: default)")]),
    ("Dataplane labels with name", mtp({"targetRef": {"kind": "Dataplane", "name": "a",
                                                                       "labels": {"x": "y"}},
                                                         "from": [rule({"kind": "Mesh"})]}),
     [("spec.targetRef.labels", "must not be set together with name")]),
    ("Dataplane from", mtp({"from": [rule({"kind": "Dataplane"})]}), [("spec.from[0].targetRef.kind", KINDS_MSG)]),
    ("empty proxyTypes", mtp({"targetRef": {"kind": "Mesh", "proxyTypes": []}, "from": [rule({"kind": "Mesh"})]}),
     [("spec.targetRef.proxyTypes", "must not be empty (leave it out to mean every proxy type)")]),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in RULES_BAD], ids=[c for c, _, _ in RULES_BAD])
def test_rules_form_violations(doc: Any, expected: list[tuple[str, str]]) -> None:
    assert validate_meshtrafficpermission(doc) == expected
