"""MeshRetry validation: Kuma's documented YAML accepted unchanged, Kuma's default policy accepted, and every bad
spec refused with every violation at its exact path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from policylib import MESH, assert_refused_at, policy_doc

from dpagent.controlplane.policies.meshretry import MeshRetryPlugin
from dpagent.controlplane.policies.meshretry.api import to_conf
from dpagent.errors import ValidationError

PLUGIN = MeshRetryPlugin()

DOCS_YAML = """
type: MeshRetry
name: retry-backend
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        http: {numRetries: 3, perTryTimeout: 2s, backOff: {baseInterval: 50ms, maxInterval: 1s},
               retryOn: ["5xx", "429", HttpMethodGet], hostSelection: [{predicate: OmitPreviousHosts}]}
        grpc: {numRetries: 2, retryOn: [Unavailable, DeadlineExceeded]}
        tcp: {maxConnectAttempt: 3}
---
type: MeshRetry
name: web-to-backend-retry-http
mesh: default
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: web
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default:
        http:
          numRetries: 10
          backOff:
            baseInterval: 15s
            maxInterval: 20m
          retryOn:
            - "5XX"
            - Retriable4xx
            - "429"
          rateLimitedBackOff:
            resetHeaders:
              - name: retry-after
                format: Seconds
              - name: x-ratelimit-reset
                format: UnixTimestamp
            maxInterval: 300s
          retriableResponseHeaders:
            - name: x-retry
              type: Exact
              value: "true"
          retriableRequestHeaders:
            - name: x-idempotent
              type: Present
          hostSelection:
            - predicate: OmitPreviousPriorities
              updateFrequency: 2
            - predicate: OmitHostsWithTags
              tags:
                version: v1
          hostSelectionMaxAttempts: 3
---
type: MeshRetry
name: tcp-retry
mesh: default
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        tcp:
          maxConnectAttempt: 5
"""


@pytest.mark.parametrize("doc", list(yaml.safe_load_all(DOCS_YAML)), ids=lambda d: d["name"])
def test_kuma_docs_yaml_is_accepted_unchanged(doc: dict[str, Any]) -> None:
    assert PLUGIN.validate(doc) == []
    policy = PLUGIN.parse(doc)
    assert to_conf(policy.to[0].conf) is not None


def test_initial_policy_is_kumas_default_and_validates() -> None:
    docs = PLUGIN.initial_policies("prod")
    assert [d["name"] for d in docs] == ["mesh-retry-all-prod"]
    assert all(PLUGIN.validate(d) == [] for d in docs)
    conf = to_conf(PLUGIN.parse(docs[0]).to[0].conf)
    assert docs[0]["mesh"] == "prod" and conf.tcp is not None and conf.tcp.max_connect_attempt == 5
    for section in (conf.http, conf.grpc):
        assert section is not None and section.num_retries == 5 and section.per_try_timeout == "16s"
        assert section.back_off is not None and (section.back_off.base_interval, section.back_off.max_interval) \
            == ("25ms", "250ms")


def retry(default: Any, to: str = "MeshService") -> dict[str, Any]:
    return policy_doc("MeshRetry", default, ref={"kind": to, "name": "backend"} if to != "Mesh" else MESH, name="r")


P = "spec.to[0].default"
BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "empty_conf": (retry({}), [P]),
    "empty_http_and_grpc": (retry({"http": {}, "grpc": {}}), [f"{P}.http", f"{P}.grpc"]),
    "tcp_needs_attempts": (retry({"tcp": {}}), [f"{P}.tcp.maxConnectAttempt"]),
    "tcp_zero_attempts": (retry({"tcp": {"maxConnectAttempt": 0}}), [f"{P}.tcp.maxConnectAttempt"]),
    "negative_and_bad_durations": (retry({"http": {"numRetries": -1, "perTryTimeout": "-1s",
                                                   "backOff": {"baseInterval": "soon", "maxInterval": "0s"}}}),
                                   [f"{P}.http.numRetries", f"{P}.http.perTryTimeout",
                                    f"{P}.http.backOff.baseInterval", f"{P}.http.backOff.maxInterval"]),
    "empty_back_off": (retry({"grpc": {"backOff": {}}}), [f"{P}.grpc.backOff"]),
    "unknown_retry_on": (retry({"http": {"retryOn": ["5xx", "Sometimes", "999", "HttpMethodFetch"]},
                                "grpc": {"retryOn": ["Unavailable", "5xx"]}}),
                         [f"{P}.http.retryOn[1]", f"{P}.http.retryOn[2]", f"{P}.http.retryOn[3]",
                          f"{P}.grpc.retryOn[1]"]),
    "grpc_has_no_host_selection": (retry({"grpc": {"numRetries": 1, "hostSelection": []}}),
                                   [f"{P}.grpc.hostSelection"]),
    "rate_limited_back_off": (retry({"http": {"rateLimitedBackOff": {
        "resetHeaders": [{"name": "retry-after", "format": "Minutes"}], "maxInterval": "0s"}}}),
        [f"{P}.http.rateLimitedBackOff.resetHeaders[0].format", f"{P}.http.rateLimitedBackOff.maxInterval"]),
    "host_selection": (retry({"http": {"hostSelection": [
        {"predicate": "OmitHostsWithTags"}, {"predicate": "OmitPreviousPriorities", "updateFrequency": 0},
        {"predicate": "OmitPreviousPriorities", "updateFrequency": 1}, {"predicate": "Random"}]}}),
        [f"{P}.http.hostSelection[0].tags", f"{P}.http.hostSelection[1].updateFrequency",
         f"{P}.http.hostSelection[2].predicate", f"{P}.http.hostSelection[3].predicate"]),
    "bad_header_match": (retry({"http": {"retriableResponseHeaders": [{"name": "x", "type": "Sometimes"}]}}),
                         [f"{P}.http.retriableResponseHeaders[0].type"]),
    "unknown_field": (retry({"http": {"numRetries": 1, "retries": 2}}), [f"{P}.http.retries"]),
    "to_kind_not_allowed": (retry({"tcp": {"maxConnectAttempt": 1}}, to="MeshSubset"), ["spec.to[0].targetRef.kind"]),
    "no_inbound_side": ({"type": "MeshRetry", "mesh": "default", "name": "r", "spec": {
        "rules": [{"default": {"tcp": {"maxConnectAttempt": 1}}}]}}, ["spec.rules", "spec.to"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_are_refused_at_every_path(case: str) -> None:
    doc, paths = BAD[case]
    assert_refused_at(PLUGIN.validate(doc), paths)
    with pytest.raises(ValidationError):
        PLUGIN.parse(doc)
