"""MeshHealthCheck validation: Kuma docs' YAML accepted unchanged; bad specs refused with every violation at its
exact path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from policylib import assert_refused_at, policy_doc

from dpagent.controlplane.policies.registry import POLICY_KINDS

PLUGIN = POLICY_KINDS["MeshHealthCheck"]

KUMA_DOCS = [
    """
type: MeshHealthCheck
mesh: default
name: web-to-backend-check
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default:
        interval: 10s
        timeout: 2s
        unhealthyThreshold: 3
        healthyThreshold: 1
        http:
          path: /health
          expectedStatuses: [200, 201]
""",
    """
type: MeshHealthCheck
mesh: default
name: full
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        interval: 10s
        timeout: 2s
        unhealthyThreshold: 3
        healthyThreshold: 1
        initialJitter: 5s
        intervalJitter: 6s
        intervalJitterPercent: 10
        healthyPanicThreshold: 60
        failTrafficOnPanic: true
        noTrafficInterval: 10s
        eventLogPath: "/tmp/health-check.log"
        alwaysLogHealthCheckFailures: true
        reuseConnection: false
        tcp:
          disabled: false
          send: Zm9v
          receive:
            - YmFy
            - YmF6
        http:
          disabled: false
          path: /health
          requestHeadersToAdd:
            set:
              - name: Content-Type
                value: application/json
            add:
              - name: Accept
                value: application/json
          expectedStatuses: [200, 201]
        grpc:
          serviceName: ""
          authority: ""
""",
]


@pytest.mark.parametrize("doc", KUMA_DOCS)
def test_kuma_docs_yaml_is_accepted(doc: str) -> None:
    assert PLUGIN.validate(yaml.safe_load(doc)) == []
    PLUGIN.parse(yaml.safe_load(doc))


def _policy(conf: dict[str, Any], kind: str = "Mesh") -> dict[str, Any]:
    return policy_doc("MeshHealthCheck", conf, ref={"kind": kind})


D = "spec.to[0].default"
BAD: list[tuple[dict[str, Any], list[str]]] = [
    (_policy({"interval": "10s"}), [D]),
    (_policy({"interval": "-1s", "timeout": "0s", "unhealthyThreshold": 0, "healthyThreshold": "1",
              "intervalJitterPercent": 101, "healthyPanicThreshold": "200", "reuseConnection": "yes",
              "tcp": {}}),
     [f"{D}.interval", f"{D}.timeout", f"{D}.unhealthyThreshold", f"{D}.healthyThreshold",
      f"{D}.intervalJitterPercent", f"{D}.healthyPanicThreshold", f"{D}.reuseConnection"]),
    (_policy({"http": {"path": "", "expectedStatuses": [200, 700, "ok"], "method": "GET"}}),
     [f"{D}.http.path", f"{D}.http.expectedStatuses[1]", f"{D}.http.expectedStatuses[2]", f"{D}.http.method"]),
    (_policy({"http": {"requestHeadersToAdd": {"set": [{"name": f"x-{i}", "value": "v"} for i in range(17)]}}}),
     [f"{D}.http.requestHeadersToAdd"]),
    (_policy({"tcp": {"receive": "bar"}, "grpc": {"serviceName": 3}}), [f"{D}.tcp.receive", f"{D}.grpc.serviceName"]),
    (_policy({"tcp": {}}, kind="MeshSubset"), ["spec.to[0].targetRef.kind"]),
    ({"type": "MeshHealthCheck", "mesh": "default", "name": "bad", "spec": {
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {}}}]}}, ["spec.from", "spec.to"]),
]


@pytest.mark.parametrize(("doc", "paths"), BAD)
def test_bad_specs_name_every_violation(doc: dict[str, Any], paths: list[str]) -> None:
    assert_refused_at(PLUGIN.validate(doc), paths)
