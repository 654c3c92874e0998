"""The `--resilience-mix` policy set of bench/cp_scale.py, and its in-process generation-cost measurement.

Every resilience / traffic-strategy kind, built from Kuma's documented example specs (reference kuma-policies.md
§15): mesh-wide MeshTimeout, MeshRetry and MeshCircuitBreaker defaults, plus one per-service override of each kind
for 10 % of the services (svc-001, svc-011, ...). Only kinds the registry has at run time are used (the others
are reported as skipped), so the bench runs unchanged while kinds land one by one.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dpagent.controlplane.app import ALLOW_ALL, DEFAULT_MESH
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot

MESH = "default"
MT, MR, MCB, MHC = "MeshTimeout", "MeshRetry", "MeshCircuitBreaker", "MeshHealthCheck"
MFI, MRL, MLBS = "MeshFaultInjection", "MeshRateLimit", "MeshLoadBalancingStrategy"
KINDS = (MT, MR, MCB, MHC, MFI, MRL, MLBS)
MESH_WIDE = (MT, MR, MCB)
CHANGED_SERVICE_INDEX = 1  # the override whose change is timed: svc-001, one of the 10 %

# The `default` (outbound kinds, one `to[]` item) or `rules[0].default` (inbound kinds) of Kuma's examples.
TO_DEFAULTS: dict[str, dict[str, Any]] = {
    MT: {"connectionTimeout": "2s", "idleTimeout": "20m", "http": {"requestTimeout": "5s", "streamIdleTimeout": "1m"}},
    MR: {"http": {"numRetries": 3, "perTryTimeout": "2s", "backOff": {"baseInterval": "50ms", "maxInterval": "1s"},
                  "retryOn": ["5xx", "429", "HttpMethodGet"], "hostSelection": [{"predicate": "OmitPreviousHosts"}]},
         "grpc": {"numRetries": 2, "retryOn": ["Unavailable", "DeadlineExceeded"]}, "tcp": {"maxConnectAttempt": 3}},
    MCB: {"connectionLimits": {"maxConnections": 100, "maxPendingRequests": 50, "maxRequests": 200, "maxRetries": 3},
          "outlierDetection": {"interval": "5s", "baseEjectionTime": "30s", "healthyPanicThreshold": 0, "detectors": {
              "totalFailures": {"consecutive": 10},
              "failurePercentage": {"minimumHosts": 5, "requestVolume": 10, "threshold": 85}}}},
    MHC: {"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3,
          "http": {"path": "/health", "expectedStatuses": [200, 204]}, "tcp": {"disabled": True}},
    MLBS: {"loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "MurmurHash2", "minRingSize": 2048}},
           "hashPolicies": [{"type": "Header", "header": {"name": "x-user-id"}, "terminal": True},
                            {"type": "Connection", "connection": {"sourceIP": True}}]},
}
RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    MFI: {"http": [{"abort": {"httpStatus": 503, "percentage": 10}}, {"delay": {"value": "2s", "percentage": "12.5"}},
                   {"responseBandwidth": {"limit": "100kbps", "percentage": 50}}]},
    MRL: {"local": {"http": {"requestRate": {"num": 100, "interval": "1s"},
                             "onRateLimit": {"status": 429, "headers": {"add": [{"name": "x-ratelimited",
                                                                                 "value": "true"}]}}},
                    "tcp": {"connectionRate": {"num": 50, "interval": "1s"}}}},
}
# Mesh-wide defaults: what Kuma creates with a new mesh (`mesh-<kind>-all-<mesh>`, reference §1.9, §4.3, §5, §6).
MESH_DEFAULTS: dict[str, dict[str, Any]] = {
    MT: {"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}},
    MR: {p: {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}
         for p in ("http", "grpc")} | {"tcp": {"maxConnectAttempt": 5}},
    MCB: {"connectionLimits": {"maxConnections": 1024, "maxPendingRequests": 1024, "maxRequests": 1024,
                               "maxRetries": 3}},
}


def present(kinds: Sequence[str] = KINDS) -> tuple[list[str], list[str]]:
    """(kinds the registry has, kinds it does not)."""
    return [k for k in kinds if k in POLICY_KINDS], [k for k in kinds if k not in POLICY_KINDS]


def overridden(services: int) -> list[int]:
    return [k for k in range(services) if k % 10 == CHANGED_SERVICE_INDEX]


def override(kind: str, target: str, variant: int = 0) -> dict[str, Any]:
    """One kind's per-service policy for `target`; `variant` 1 is the timed change (a different value)."""
    name = f"{kind.lower()}-{target}"
    if kind in RULE_DEFAULTS:  # inbound kinds: on the target's own inbounds
        return {"type": kind, "mesh": MESH, "name": name, "spec": {
            "targetRef": {"kind": "MeshService", "name": target}, "rules": [{"default": RULE_DEFAULTS[kind]}]}}
    conf = copy.deepcopy(TO_DEFAULTS[kind])
    if variant and kind == MT:
        conf["http"]["requestTimeout"] = "7s"
    elif variant and kind == MLBS:
        conf = {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65537}},
                "hashPolicies": conf["hashPolicies"]}
    return {"type": kind, "mesh": MESH, "name": name, "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": target}, "default": conf}]}}


def mesh_wide(kind: str) -> dict[str, Any]:
    prefix = {MT: "mesh-timeout-all", MR: "mesh-retry-all", MCB: "mesh-circuit-breaker-all"}[kind]
    return {"type": kind, "mesh": MESH, "name": f"{prefix}-{MESH}", "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": MESH_DEFAULTS[kind]}]}}


def policy_docs(services: int, service: Callable[[int], str], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Every document of the mix; one a kind's validation refuses is left out and printed with its violations
    (a kind that lands with a narrower schema than Kuma's examples must not stop the whole bench)."""
    docs = [mesh_wide(k) for k in MESH_WIDE if k in kinds]
    docs += [override(k, service(s)) for k in kinds for s in overridden(services)]
    out = []
    for doc in docs:
        problems = POLICY_KINDS[doc["type"]].validate(doc)
        if problems:
            print(f"resilience mix: {doc['type']} {doc['name']} refused, left out: {problems}", file=sys.stderr)
        else:
            out.append(doc)
    return out


def change_kind(kinds: Sequence[str]) -> str | None:
    """MeshTimeout when present (the issue's measured change), else this branch's own kind."""
    return MT if MT in kinds else (MLBS if MLBS in kinds else None)


def generation_us(dp_docs: list[dict[str, Any]], extra: list[dict[str, Any]], repeat: int = 3) -> tuple[float, float]:
    """(µs per proxy to generate and snapshot every proxy of the mesh, ms to build the mesh state), best of
    `repeat` fresh states: what one full sync costs the CP, without the network. `extra` is added to the
    first-start allow-all MeshTrafficPermission."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in [ALLOW_ALL, *extra]:
        by_kind.setdefault(doc["type"], []).append(doc)
    per_proxy, build = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        state = build_mesh_state(DEFAULT_MESH, dp_docs, by_kind, trust_bundle="bench")
        t1 = time.perf_counter()
        for dp in state.by_name.values():
            proxy_snapshot(state, dp)
        t2 = time.perf_counter()
        build.append((t1 - t0) * 1e3)
        per_proxy.append((t2 - t1) * 1e6 / max(1, len(state.by_name)))
    return min(per_proxy), statistics.median(build)
