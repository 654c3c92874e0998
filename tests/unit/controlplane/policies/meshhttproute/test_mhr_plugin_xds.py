"""MeshHTTPRoute's xDS step on its own: already-matched rules in, the destination's RDS route (and the clusters its
backends need) out, one golden per case, each loaded by the real Envoy. Also: a route change moves no listener
bytes, and proxies with the same matched items share one serialised route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, MESH, SERVERS, TPROXY_CLIENT, generate_with
from unit.controlplane.xds._xds_testlib import (
    assert_golden,
    envoy_accepts,
    resources_to_plain,
)

from dpagent.controlplane.policies.meshhttproute.api import KIND, to_rules
from dpagent.controlplane.policies.meshhttproute.plugin import Destination, HttpRouteRules
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

TESTDATA = Path(__file__).parent / "testdata"


def subset(version: str, weight: int) -> dict[str, Any]:
    return {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": version}, "weight": weight}


def rules(*items: list[dict[str, Any]]) -> HttpRouteRules:
    """Each item: one matched to[] item's rules toward `backend`, lowest priority first."""
    return HttpRouteRules(by_service={"backend": Destination(
        tuple(to_rules({"rules": r}) for r in items), tuple(("p", i) for i in range(len(items))))})


PREFIX_ALL = [{"path": {"type": "PathPrefix", "value": "/"}}]
CASES: dict[str, HttpRouteRules] = {
    "canary_split": rules([{"matches": PREFIX_ALL, "default": {"backendRefs": [subset("v1", 90), subset("v2", 10)]}}]),
    "header_to_v2": rules([{"matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "yes"}]}],
                            "default": {"backendRefs": [subset("v2", 1)]}}]),
    "rewrite_headers_redirect": rules([
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "default": {"filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                             "replacePrefixMatch": "/new"}}},
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-route", "value": "1"}],
                                                                        "remove": ["x-drop"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-seen",
                                                                                   "value": "yes"}]}}]}},
        {"matches": [{"path": {"type": "Exact", "value": "/moved"}}], "default": {"filters": [
            {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301, "path": {
                "type": "ReplaceFullPath", "replaceFullPath": "/here"}}}]}}]),
    "two_policies_merge": rules(
        [{"matches": PREFIX_ALL, "default": {"backendRefs": [subset("v1", 1)]}}],
        [{"matches": PREFIX_ALL, "default": {"backendRefs": [subset("v2", 1)]}}]),
}


def _apply(case: str, dp: Any = CLIENT, ctx: MeshContext = CONTEXT) -> ResourceSet:
    return generate_with({KIND: CASES[case]}, dp, ctx)


def _outbound(rs: ResourceSet) -> dict[str, Any]:
    msgs = rs.messages()
    return {t: {n: m for n, m in msgs.get(t, {}).items() if rs.get(t, n).origin == "outbound"}  # type: ignore[union-attr]
            for t in (ROUTE, CLUSTER, ENDPOINT)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    assert_golden(resources_to_plain(_outbound(_apply(case))), f"xds_{case}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(_apply(case).messages(), tmp_path, "spiffe://default/web")


@pytest.mark.parametrize("dp", [CLIENT, TPROXY_CLIENT], ids=["outbound", "tproxy"])
def test_route_change_moves_no_listener(dp: Any) -> None:
    """The listeners (outbound and capture) are byte-identical with and without the route: only RDS changes."""
    before, after = generate_with({}, dp).messages(), _apply("canary_split", dp).messages()
    assert {n: m.SerializeToString(deterministic=True) for n, m in before[LISTENER].items()} == \
        {n: m.SerializeToString(deterministic=True) for n, m in after[LISTENER].items()}
    assert before[ROUTE]["outbound:backend"] != after[ROUTE]["outbound:backend"]
    assert len(after[CLUSTER]) == len(before[CLUSTER]) + 2  # the v1 and v2 subset clusters


def test_same_items_share_one_serialised_route_and_backend_clusters() -> None:
    ctx = MeshContext(MESH, [*SERVERS, CLIENT, TPROXY_CLIENT])
    a, b = _apply("canary_split", CLIENT, ctx), _apply("canary_split", TPROXY_CLIENT, ctx)
    ra, rb = a.get(ROUTE, "outbound:backend"), b.get(ROUTE, "outbound:backend")
    assert ra is not None and rb is not None and ra.shared is not None and ra.shared is rb.shared
    subsets = [n for n in a.messages()[CLUSTER] if n.startswith("backend-")]
    assert len(subsets) == 2
    for n in subsets:
        ca, cb_ = a.get(CLUSTER, n), b.get(CLUSTER, n)
        assert ca is not None and cb_ is not None and ca.shared is cb_.shared is not None
