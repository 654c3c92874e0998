"""MeshTCPRoute validation: the reference's example passes; refused documents report every violation at its
exact path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from policylib import assert_refused_at

from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.meshtcproute.api import parse_meshtcproute, to_rules, validate_meshtcproute
from dpagent.errors import ValidationError

EXAMPLE = yaml.safe_load("""
type: MeshTCPRoute
name: db-split
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default:
            backendRefs: [{kind: MeshService, name: db, weight: 80}, {kind: MeshService, name: db-replica, weight: 20}]
""")


def test_example_is_valid_and_parses() -> None:
    assert validate_meshtcproute(EXAMPLE) == []
    route = parse_meshtcproute(EXAMPLE)
    assert isinstance(route, Policy) and route.target_ref.kind == "Mesh"
    refs = to_rules(route.to[0].conf)[0].default.backend_refs
    assert [(r.name, r.weight) for r in refs] == [("db", 80), ("db-replica", 20)]


def test_more_shapes_are_valid() -> None:
    doc = {"type": "MeshTCPRoute", "name": "r", "mesh": "default", "spec": {
        "targetRef": {"kind": "MeshSubset", "tags": {"team": "a"}, "proxyTypes": ["Sidecar"]},
        "to": [{"targetRef": {"kind": "MeshExternalService", "name": "pg"}, "rules": []},
               {"targetRef": {"kind": "MeshMultiZoneService", "labels": {"app": "db"}}, "rules": [
                   {"default": {"backendRefs": [{"kind": "MeshMultiZoneService", "name": "db", "port": 5432},
                                                {"kind": "MeshServiceSubset", "name": "db", "tags": {"v": "2"}}]}},
                   {"default": {"backendRefs": [{"kind": "MeshService", "name": "ignored"}]}}]}]}}
    assert validate_meshtcproute(doc) == []


def _doc(spec: Any) -> dict[str, Any]:
    return {"type": "MeshTCPRoute", "name": "r", "mesh": "default", "spec": spec}


D0 = "spec.to[0].rules[0].default"
REFUSED: dict[str, tuple[dict[str, Any], set[str]]] = {
    "envelope": ({"type": "MeshHTTPRoute", "name": "r", "mesh": "default", "spec": []}, {"type", "spec"}),
    "top kind": (_doc({"targetRef": {"kind": "MeshHTTPRoute", "name": "x"}}), {"spec.targetRef.kind"}),
    "to needs targetRef and rules": (_doc({"to": [{}]}), {"spec.to[0].targetRef", "spec.to[0].rules"}),
    "to kind and fields": (_doc({"to": [{"targetRef": {"kind": "MeshServiceSubset", "name": "db"}, "rules": [],
                                         "hostnames": ["a"]}]}),
                           {"spec.to[0].targetRef.kind", "spec.to[0].hostnames"}),
    "rule without default": (_doc({"to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                                           "rules": [{"matches": [{}]}]}]}),
                             {"spec.to[0].rules[0].matches", D0}),
    "backendRefs required": (_doc({"to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "rules": [
        {"default": {}}, {"default": {"backendRefs": []}}]}]}),
                             {f"{D0}.backendRefs", "spec.to[0].rules[1].default.backendRefs"}),
    "backendRef fields": (_doc({"to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "rules": [
        {"default": {"backendRefs": [{"kind": "MeshMultiZoneService", "name": "db"},
                                     {"kind": "MeshService", "name": "db", "weight": "80"},
                                     {"kind": "MeshExternalService", "name": "pg", "sectionName": "x"},
                                     {"kind": "MeshService", "name": "db", "tags": {"v": "1"}}],
                     "filters": []}}]}]}),
                          {f"{D0}.backendRefs[0].port", f"{D0}.backendRefs[1].weight",
                           f"{D0}.backendRefs[2].sectionName", f"{D0}.backendRefs[3].tags", f"{D0}.filters"}),
    "gateway to must be Mesh": (_doc({"targetRef": {"kind": "MeshGateway", "name": "gw"}, "to": [
        {"targetRef": {"kind": "MeshService", "name": "db"},
         "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "db"}]}}]}]}),
                                {"spec.to[0].targetRef.kind"}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_exact_paths(case: str) -> None:
    doc, paths = REFUSED[case]
    assert_refused_at(validate_meshtcproute(doc), paths)
    with pytest.raises(ValidationError) as err:
        parse_meshtcproute(doc)
    assert all(p in str(err.value) for p in paths)
