"""MeshFaultInjection validation: Kuma's docs examples accepted unchanged, bad specs refused at exact paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from policylib import MESH, policy_doc

from dpagent.controlplane.policies.meshfaultinjection import MeshFaultInjectionPlugin

PLUGIN = MeshFaultInjectionPlugin()

# Kuma's docs (universal), as published.
DOCS = ["""
type: MeshFaultInjection
mesh: default
name: default-fault-injection
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: MeshService
        name: frontend
      default:
        http:
          - abort:
              httpStatus: 500
              percentage: "2.5"
          - abort:
              httpStatus: 500
              percentage: 10
          - delay:
              value: 5s
              percentage: 5
""", """
type: MeshFaultInjection
mesh: default
name: default-fault-injection
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          - abort:
              httpStatus: 500
              percentage: "2.5"
          - delay:
              value: 5s
              percentage: "1.5"
          - responseBandwidth:
              limit: 100kbps
              percentage: 10
""", """
type: MeshFaultInjection
mesh: default
name: mfi-rules
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: backend
  rules:
    - default:
        http:
          - abort:
              httpStatus: 503
              percentage: 30
"""]


@pytest.mark.parametrize("doc", DOCS)
def test_kuma_docs_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    assert PLUGIN.parse(parsed).name == parsed["name"]


def mfi(http: Any) -> dict[str, Any]:
    return policy_doc("MeshFaultInjection", {"http": http}, "from", top=MESH, name="p")


P = "spec.from[0].default.http[0]"
BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("percentage over 100", [{"abort": {"httpStatus": 503, "percentage": 101}}],
     [(f"{P}.abort.percentage", "must be between 0 and 100")]),
    ("negative delay, bad percentage string", [{"delay": {"value": "-1s", "percentage": "x"}}],
     [(f"{P}.delay.value", "'-1s' is not a duration; use a form like 30s, 5m, 1h30m, 500ms, 7d, 2w or 10y"),
      (f"{P}.delay.percentage", 'must be a whole number or a decimal string such as "12.5"')]),
    ("bad status, missing percentage", [{"abort": {"httpStatus": 700}}],
     [(f"{P}.abort.httpStatus", "must be an HTTP status code between 100 and 599"),
      (f"{P}.abort.percentage", "must be defined")]),
    ("bad bandwidth unit", [{"responseBandwidth": {"limit": "10MBps", "percentage": 5}}],
     [(f"{P}.responseBandwidth.limit", "must be a whole number followed by kbps, Mbps or Gbps, e.g. 100kbps")]),
    ("empty fault", [{}], [(P, "must define at least one of: abort, delay, responseBandwidth")]),
]


@pytest.mark.parametrize(("http", "want"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_every_violation_with_path(http: Any, want: list[tuple[str, str]]) -> None:
    assert PLUGIN.validate(mfi(http)) == want


def test_to_section_and_unknown_from_kind_refused() -> None:
    doc = mfi([{"abort": {"httpStatus": 503, "percentage": 1}}])
    doc["spec"]["from"][0]["targetRef"] = {"kind": "MeshGateway", "name": "g"}
    doc["spec"]["to"] = []
    got = dict(PLUGIN.validate(doc))
    assert "spec.to" in got and "spec.from[0].targetRef.kind" in got
