"""MeshCircuitBreaker validation: Kuma docs' YAML accepted unchanged, bad specs refused with every violation at its
exact path, and Kuma's default policy for a new mesh is itself valid."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from policylib import assert_refused_at, policy_doc

from dpagent.controlplane.policies.registry import POLICY_KINDS

PLUGIN = POLICY_KINDS["MeshCircuitBreaker"]

KUMA_DOCS = [
    """
type: MeshCircuitBreaker
mesh: default
name: circuit-breaker
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default:
        connectionLimits:
          maxConnections: 2
          maxPendingRequests: 8
          maxRetries: 2
          maxRequests: 2
        outlierDetection:
          disabled: false
          interval: 5s
          baseEjectionTime: 30s
          maxEjectionPercent: 20
          splitExternalAndLocalErrors: true
          detectors:
            totalFailures:
              consecutive: 10
            gatewayFailures:
              consecutive: 10
            localOriginFailures:
              consecutive: 10
            successRate:
              minimumHosts: 5
              requestVolume: 10
              standardDeviationFactor: "1.9"
            failurePercentage:
              requestVolume: 10
              minimumHosts: 5
              threshold: 85
""",
    """
type: MeshCircuitBreaker
mesh: default
name: inbound-circuit-breaker
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: backend
  rules:
    - default:
        connectionLimits:
          maxConnections: 2
          maxPendingRequests: 8
          maxRequests: 2
        outlierDetection:
          disabled: false
          detectors:
            totalFailures:
              consecutive: 10
""",
    """
type: MeshCircuitBreaker
mesh: default
name: legacy-from
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        outlierDetection:
          healthyPanicThreshold: "12.5"
          detectors:
            gatewayFailures:
              consecutive: 3
""",
]


@pytest.mark.parametrize("doc", KUMA_DOCS)
def test_kuma_docs_yaml_is_accepted(doc: str) -> None:
    assert PLUGIN.validate(yaml.safe_load(doc)) == []
    PLUGIN.parse(yaml.safe_load(doc))


def _policy(conf: dict[str, Any], section: str = "to") -> dict[str, Any]:
    return policy_doc("MeshCircuitBreaker", conf, section)


BAD: list[tuple[dict[str, Any], list[str]]] = [
    (_policy({}), ["spec.to[0].default"]),
    (_policy({"connectionLimits": {"maxConnections": 0, "maxRequests": -1, "maxRetries": "3", "maxPools": 1}}),
     ["spec.to[0].default.connectionLimits.maxConnections", "spec.to[0].default.connectionLimits.maxRequests",
      "spec.to[0].default.connectionLimits.maxRetries", "spec.to[0].default.connectionLimits.maxPools"]),
    (_policy({"outlierDetection": {"interval": "-5s", "baseEjectionTime": "0s", "maxEjectionPercent": 101,
                                   "healthyPanicThreshold": "150", "detectors": {"totalFailures": {}}}}),
     ["spec.to[0].default.outlierDetection.interval", "spec.to[0].default.outlierDetection.baseEjectionTime",
      "spec.to[0].default.outlierDetection.maxEjectionPercent",
      "spec.to[0].default.outlierDetection.healthyPanicThreshold"]),
    (_policy({"outlierDetection": {"interval": "5s"}}), ["spec.to[0].default.outlierDetection.detectors"]),
    (_policy({"outlierDetection": {"detectors": {}}}), ["spec.to[0].default.outlierDetection.detectors"]),
    (_policy({"outlierDetection": {"detectors": {
        "totalFailures": {"consecutive": 0}, "successRate": {"standardDeviationFactor": "-1", "minimumHosts": 0},
        "failurePercentage": {"threshold": 120}, "unknown": {}}}}),
     ["spec.to[0].default.outlierDetection.detectors.totalFailures.consecutive",
      "spec.to[0].default.outlierDetection.detectors.successRate.standardDeviationFactor",
      "spec.to[0].default.outlierDetection.detectors.successRate.minimumHosts",
      "spec.to[0].default.outlierDetection.detectors.failurePercentage.threshold",
      "spec.to[0].default.outlierDetection.detectors.unknown"]),
    ({"type": "MeshCircuitBreaker", "mesh": "default", "name": "bad", "spec": {
        "to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}}, "default": {"connectionLimits": {}}}],
        "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"connectionLimits": {}}}],
        "rules": [{"default": {"connectionLimits": {}}}]}},
     ["spec.to[0].targetRef.kind", "spec.from[0].targetRef.kind", "spec.rules"]),
]


@pytest.mark.parametrize(("doc", "paths"), BAD)
def test_bad_specs_name_every_violation(doc: dict[str, Any], paths: list[str]) -> None:
    assert_refused_at(PLUGIN.validate(doc), paths)


def test_initial_policy_is_kumas_default_and_valid() -> None:
    docs = PLUGIN.initial_policies("prod")  # type: ignore[attr-defined]
    assert [d["name"] for d in docs] == ["mesh-circuit-breaker-all-prod"]
    assert all(d["mesh"] == "prod" for d in docs)
    for d in docs:
        assert PLUGIN.validate(d) == []
    conf = docs[0]["spec"]["to"][0]["default"]
    assert conf == {"connectionLimits": {"maxConnections": 1024, "maxPendingRequests": 1024, "maxRequests": 1024,
                                         "maxRetries": 3}}
