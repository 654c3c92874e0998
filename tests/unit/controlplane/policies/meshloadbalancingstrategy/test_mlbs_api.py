"""MeshLoadBalancingStrategy validation: Kuma's documented YAML is accepted unchanged, and each bad spec is refused
with every violation at its exact path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from policylib import assert_refused_at

from dpagent.controlplane.policies.meshloadbalancingstrategy import MeshLoadBalancingStrategyPlugin

PLUGIN = MeshLoadBalancingStrategyPlugin()

# Kuma's documented example (reference §15) and a nested-list variant, kept verbatim in a YAML file.
KUMA_DOC, NESTED = yaml.safe_load_all((Path(__file__).parent / "testdata" / "kuma_docs.yaml").read_text())


@pytest.mark.parametrize("doc", [KUMA_DOC, NESTED], ids=["kuma-docs", "nested"])
def test_documented_yaml_is_accepted_unchanged(doc: dict[str, Any]) -> None:
    assert PLUGIN.validate(doc) == []
    assert PLUGIN.parse(doc).to


def _with(conf: dict[str, Any], ref: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(KUMA_DOC)
    doc["spec"]["to"][0]["default"] = conf
    if ref is not None:
        doc["spec"]["to"][0]["targetRef"] = ref
    return doc


P = "spec.to[0].default"
BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown lb type": (_with({"loadBalancer": {"type": "Fastest"}}), [f"{P}.loadBalancer.type"]),
    "type missing": (_with({"loadBalancer": {"ringHash": {}}}), [f"{P}.loadBalancer.type"]),
    "ring sizes": (_with({"loadBalancer": {"type": "RingHash", "ringHash": {
        "minRingSize": 0, "maxRingSize": 9_000_000, "hashFunction": "Md5"}}}),
        [f"{P}.loadBalancer.ringHash.hashFunction", f"{P}.loadBalancer.ringHash.minRingSize",
         f"{P}.loadBalancer.ringHash.maxRingSize"]),
    "maglev not prime": (_with({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65536}}}),
                         [f"{P}.loadBalancer.maglev.tableSize"]),
    "params of another type": (_with({"loadBalancer": {"type": "Random", "leastRequest": {"choiceCount": 1}}}),
                               [f"{P}.loadBalancer.leastRequest", f"{P}.loadBalancer.leastRequest.choiceCount"]),
    "negative bias": (_with({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"activeRequestBias": "-1"}}}),
                      [f"{P}.loadBalancer.leastRequest.activeRequestBias"]),
    "both hash lists": (_with({"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": [
        {"type": "Header", "header": {"name": "a"}}]}}, "hashPolicies": [{"type": "Header", "header": {"name": "b"}}]}),
        [f"{P}.hashPolicies"]),
    "bad hash entries": (_with({"hashPolicies": [
        {"type": "Url"}, {"type": "Header"}, {"type": "Cookie", "cookie": {"name": "s", "path": "rel", "ttl": "-1s"}},
        {"type": "Header", "header": {"name": "x"}, "cookie": {"name": "y"}}]}),
                         [f"{P}.hashPolicies[0].type", f"{P}.hashPolicies[1].header",
                          f"{P}.hashPolicies[2].cookie.path", f"{P}.hashPolicies[2].cookie.ttl",
                          f"{P}.hashPolicies[3].cookie"]),
    "locality": (_with({"localityAwareness": {"localZone": {"affinityTags": [{"key": "a", "weight": 1}, {"key": "b"}]},
                                              "crossZone": {"failover": [{"to": {"type": "Only"}},
                                                                         {"to": {"type": "Any", "zones": ["z"]}},
                                                                         {"to": {"type": "Nowhere"}}],
                                                            "failoverThreshold": {"percentage": 150}}}}),
                 [f"{P}.localityAwareness.localZone.affinityTags",
                  f"{P}.localityAwareness.crossZone.failover[0].to.zones",
                  f"{P}.localityAwareness.crossZone.failover[1].to.zones",
                  f"{P}.localityAwareness.crossZone.failover[2].to.type",
                  f"{P}.localityAwareness.crossZone.failoverThreshold.percentage"]),
    "unknown field": (_with({"loadBalancer": {"type": "RoundRobin"}, "stickiness": True}), [f"{P}.stickiness"]),
    "unsupported to kind": (_with({"loadBalancer": {"type": "RoundRobin"}}, {"kind": "MeshGateway", "name": "gw"}),
                            ["spec.to[0].targetRef.kind"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_are_refused_at_their_paths(case: str) -> None:
    doc, paths = BAD[case]
    assert_refused_at(PLUGIN.validate(doc), paths)
