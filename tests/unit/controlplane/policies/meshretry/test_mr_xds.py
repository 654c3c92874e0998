"""MeshRetry's xDS step: already-matched rules in, retry policies on the outbound routes and connect attempts on
the outbound tcp_proxies out; one golden per case, each loaded by the real Envoy. Plus the merge per destination,
route sharing by (service, conf), and the merged conf in `inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, TPROXY_CLIENT, generate_with
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.matching import match
from dpagent.controlplane.policies.meshretry import MeshRetryPlugin, RetryRules
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

TESTDATA = Path(__file__).parent / "testdata"
PLUGIN = MeshRetryPlugin()
KUMA_DEFAULT = PLUGIN.initial_policies("default")[0]["spec"]["to"][0]["default"]

# case → RetryRules items: (service or None for Mesh, conf), lowest priority first
CASES: dict[str, tuple[tuple[str | None, dict[str, Any]], ...]] = {
    "kuma_default": ((None, KUMA_DEFAULT),),
    "status_codes_methods_and_headers": (("backend", {"http": {
        "numRetries": 3, "perTryTimeout": "2s", "backOff": {"maxInterval": "1s"},
        "retryOn": ["5xx", "503", "429", "HttpMethodGet", "HttpMethodPut"],
        "retriableResponseHeaders": [{"name": "x-retry", "value": "yes"}],
        "retriableRequestHeaders": [{"name": "x-idempotent", "type": "Present"}],
        "rateLimitedBackOff": {"resetHeaders": [{"name": "retry-after", "format": "Seconds"},
                                                {"name": "x-reset", "format": "UnixTimestamp"}],
                               "maxInterval": "30s"},
        "hostSelection": [{"predicate": "OmitPreviousHosts"},
                          {"predicate": "OmitHostsWithTags", "tags": {"version": "v1"}},
                          {"predicate": "OmitPreviousPriorities", "updateFrequency": 3}],
        "hostSelectionMaxAttempts": 4}}),),
    "zero_retries_means_none_and_tcp_only_for_db": ((None, {"http": {"numRetries": 0},
                                                            "tcp": {"maxConnectAttempt": 2}}),),
    "service_conf_merged_over_mesh": ((None, {"http": {"numRetries": 5, "retryOn": ["5xx"]},
                                              "tcp": {"maxConnectAttempt": 4}}),
                                      ("backend", {"http": {"numRetries": 1, "perTryTimeout": "100ms"}}),
                                      ("db", {"tcp": {"maxConnectAttempt": 9}})),
}


def rules(case: str) -> RetryRules:
    return RetryRules(items=CASES[case])


def _generate(case: str, dp: Any = CLIENT) -> ResourceSet:
    return generate_with({"MeshRetry": rules(case)}, dp)


def _outbound(rs: ResourceSet) -> dict[str, Any]:
    msgs = rs.messages()
    return {"route": msgs[ROUTE]["outbound:backend"],
            "listeners": {n: m for n, m in msgs[LISTENER].items() if n.startswith("outbound:")}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    out = _outbound(_generate(case))
    tproxy = _generate(case, TPROXY_CLIENT).messages()
    capture = tproxy[LISTENER]["outbound:passthrough"]
    db_chains = [c for c in capture.filter_chains if c.name.startswith("outbound:db:")]
    assert db_chains
    plain = resources_to_plain({ROUTE: {"outbound:backend": out["route"]}, LISTENER: out["listeners"]})
    plain["tproxy_db_chains"] = resources_to_plain({LISTENER: {c.name: c for c in db_chains}})["Listener"]
    assert_golden(plain, case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    for dp in (CLIENT, TPROXY_CLIENT):
        (tmp_path / dp.name).mkdir()
        envoy_accepts(_generate(case, dp).messages(), tmp_path / dp.name, "spiffe://default/web")


def test_no_retry_policy_keeps_the_shared_route_and_listeners() -> None:
    plain = generate_with({})
    retried = _generate("zero_retries_means_none_and_tcp_only_for_db")
    assert retried.get(ROUTE, "outbound:backend").shared is plain.get(ROUTE, "outbound:backend").shared


def test_route_with_retries_is_shared_by_equal_confs_only() -> None:
    """A per-client MeshRetry must not break sharing: equal effective confs → the same serialised route."""
    ctx = MeshContext(CONTEXT.mesh, CONTEXT.dataplanes, vips=CONTEXT.vips)
    a = generate_with({"MeshRetry": rules("kuma_default")}, CLIENT, ctx)
    # The same conf reached through a different policy list still shares: the key is the merged conf.
    b = generate_with({"MeshRetry": RetryRules(items=(("backend", KUMA_DEFAULT),))}, CLIENT, ctx)
    c = generate_with({"MeshRetry": rules("service_conf_merged_over_mesh")}, CLIENT, ctx)
    ra, rb, rc = (rs.get(ROUTE, "outbound:backend").shared for rs in (a, b, c))
    assert ra is not None and ra is rb
    assert rc is not None and rc is not ra and rc.digest != ra.digest


def policy(name: str, top: dict[str, Any], to: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshRetry", "mesh": "default", "name": name,
            "spec": {"targetRef": top, "to": [{"targetRef": to, "default": default}]}}


MESH_WIDE = policy("all", {"kind": "Mesh"}, {"kind": "Mesh"},
                   {"http": {"numRetries": 5, "retryOn": ["5xx"]}, "tcp": {"maxConnectAttempt": 4}})
FOR_WEB = policy("web-backend", {"kind": "Dataplane", "labels": {"app": "web"}},
                 {"kind": "MeshService", "name": "backend"}, {"http": {"numRetries": 1, "retryOn": None}})


def test_matched_confs_merge_per_destination_and_show_in_inspect() -> None:
    dp = msgspec.structs.replace(CLIENT, labels={"app": "web"})
    ctx = MeshContext(CONTEXT.mesh, [*CONTEXT.dataplanes], policies={"MeshRetry": [MESH_WIDE, FOR_WEB]},
                      vips=CONTEXT.vips)
    r = PLUGIN.rules(ctx, dp, match("MeshRetry", ctx.parsed_policies["MeshRetry"], dp))
    # null deletes retryOn (back to Envoy's defaults), numRetries overridden, tcp kept from the Mesh policy
    assert r.outbound_conf("backend") == {"http": {"numRetries": 1}, "tcp": {"maxConnectAttempt": 4}}
    assert r.outbound_conf("db") == MESH_WIDE["spec"]["to"][0]["default"]
    view = {k.kind: k for k in kind_policies(build_proxy(ctx, dp))}["MeshRetry"]
    assert {o.service: o.conf for o in view.outbounds} == {"backend": r.outbound_conf("backend"),
                                                           "db": r.outbound_conf("db")}


def test_destinations_this_cp_cannot_resolve_are_inspect_warnings() -> None:
    per_route = policy("per-route", {"kind": "Mesh"}, {"kind": "MeshHTTPRoute", "name": "canary"},
                       {"http": {"numRetries": 2}})
    ctx = MeshContext(CONTEXT.mesh, [*CONTEXT.dataplanes], policies={"MeshRetry": [per_route]}, vips=CONTEXT.vips)
    r = PLUGIN.rules(ctx, CLIENT, match("MeshRetry", ctx.parsed_policies["MeshRetry"], CLIENT))
    assert r.items == () and r.outbound_conf("backend") is None
    assert len(r.warnings) == 1 and "per-route" in r.warnings[0] and "MeshHTTPRoute" in r.warnings[0]


def test_retries_reach_every_forwarding_route_of_a_meshhttproute() -> None:
    """Order 1400 after 100: the route MeshHTTPRoute built (itself shared) gets the retry policy on each route that
    forwards; the redirect keeps none."""
    from dpagent.controlplane.xds.generators.profile import generate

    mhr = {"type": "MeshHTTPRoute", "mesh": "default", "name": "split", "spec": {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}},
            {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "default": {"filters": [
                {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}}]}]}}
    ctx = MeshContext(CONTEXT.mesh, [*CONTEXT.dataplanes], vips=CONTEXT.vips,
                      policies={"MeshHTTPRoute": [mhr], "MeshRetry": [MESH_WIDE]})
    route = generate(ctx, CLIENT, build_proxy(ctx, CLIENT)).messages()[ROUTE]["outbound:backend"]
    routes = [r for vh in route.virtual_hosts for r in vh.routes]
    forwarding = [r for r in routes if r.HasField("route")]
    assert len(forwarding) >= 2 and len(routes) > len(forwarding)
    assert all(r.route.retry_policy.num_retries.value == 5 and r.route.retry_policy.retry_on == "5xx"
               for r in forwarding)
