"""MeshHTTPRoute → Envoy: per-case golden files of the outbound RouteConfiguration and the backend clusters and
endpoints it needs, each also loaded by the real Envoy (`--mode validate`) inside an outbound HCM listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from route_testlib import bootstrap, hcm, matched, static_clusters, to_plain
from unit.controlplane.xds._xds_testlib import assert_golden_file, envoy_validate

from dpagent.controlplane.policies.meshhttproute.api import parse_meshhttproute
from dpagent.controlplane.policies.meshhttproute.ordering import destination_rules
from dpagent.controlplane.policies.meshhttproute.routes import outbound_routes
from dpagent.controlplane.policies.meshroute.backends import backend_resources
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.model.dataplane import parse_dataplane

TESTDATA = Path(__file__).parent / "testdata"
SERVICE = "backend"


def dp(name: str, address: str, service: str, ready: bool = True, **tags: str) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": 8080, "servicePort": 8081,
                               "tags": {"kuma.io/service": service, "kuma.io/protocol": "http", **tags}}
    if not ready:
        inbound["health"] = {"ready": False}
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": address, "inbound": [inbound]}}


DATAPLANES = [parse_dataplane(d) for d in (
    dp("backend-1", "10.0.0.2", SERVICE, version="v1"),
    dp("backend-2", "10.0.0.3", SERVICE, version="v2", zone="east"),
    dp("backend-3", "10.0.0.4", SERVICE, ready=False, version="v2"),
    dp("shadow-1", "10.0.0.9", "shadow", version="v9"),
)]


def route(name: str, *rules: dict[str, Any], to: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "MeshHTTPRoute", "name": name, "mesh": "default", "spec": {"to": [
        {"targetRef": to or {"kind": "MeshService", "name": SERVICE}, "rules": list(rules)}]}}


def prefix(value: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "PathPrefix", "value": value}}]


def subset(version: str, weight: int = 1) -> dict[str, Any]:
    return {"kind": "MeshServiceSubset", "name": SERVICE, "tags": {"version": version}, "weight": weight}


def redirect(**fields: Any) -> dict[str, Any]:
    return {"type": "RequestRedirect", "requestRedirect": fields}


# case → policies, lowest priority first (the order the pipeline sorts them into)
CASES: dict[str, list[dict[str, Any]]] = {
    "canary_and_header": [route(
        "web-to-backend",
        {"matches": prefix("/api"), "default": {"backendRefs": [subset("v1", 90), subset("v2", 10)]}},
        {"matches": [{"method": "GET", "headers": [{"type": "Exact", "name": "x-beta", "value": "1"}]}],
         "default": {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
             "set": [{"name": "x-routed", "value": "beta"}], "add": [{"name": "x-hop", "value": "mesh"}],
             "remove": ["x-debug"]}}], "backendRefs": [subset("v2")]}})],
    "rewrite_and_mirror": [route(
        "rewrite-and-mirror",
        {"matches": prefix("/v1"), "default": {"filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
            {"type": "RequestMirror", "requestMirror": {"percentage": "10", "backendRef": {
                "kind": "MeshService", "name": "shadow"}}}]}},
        {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "default": {"filters": [
            {"type": "URLRewrite", "urlRewrite": {"hostname": "backend.internal",
                                                  "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}},
            {"type": "RequestMirror", "requestMirror": {"percentage": "12.5", "backendRef": subset("v2")}},
            {"type": "RequestMirror", "requestMirror": {"percentage": "0.125", "backendRef": {
                "kind": "MeshServiceSubset", "name": "shadow", "tags": {"version": "v9"}}}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-b", "value": "2"}]}},
        ]}})],
    "redirects": [route(
        "redirects",
        {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "default": {"filters": [redirect(
            scheme="https", hostname="example.com", port=8443, statusCode=301,
            path={"type": "ReplaceFullPath", "replaceFullPath": "/new"})]}},
        {"matches": prefix("/legacy"), "default": {"filters": [redirect(
            statusCode=308, path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/modern"})]}},
        {"matches": prefix("/"), "default": {"filters": [redirect(hostname="www.example.com", statusCode=303)]}})],
    "all_matches": [route(
        "all-matches",
        {"matches": [
            {"path": {"type": "Exact", "value": "/login"}, "method": "POST",
             "queryParams": [{"type": "Exact", "name": "a", "value": "1"},
                             {"type": "RegularExpression", "name": "b", "value": "^x+$"}],
             "headers": [{"type": "Present", "name": "x-a"}, {"type": "Absent", "name": "x-b"},
                         {"type": "Prefix", "name": "x-c", "value": "p"}, {"type": "Prefix", "name": "x-empty"},
                         {"type": "RegularExpression", "name": "x-d", "value": "v[0-9]"},
                         {"name": "x-e", "value": "e"}]},
            {"path": {"type": "RegularExpression", "value": "^/items/[0-9]+$"}},
            {"method": "DELETE"}],
         "default": {"backendRefs": [subset("v1")]}})],
    "merged_policies": [
        route("zz-low",
              {"matches": prefix("/a"), "default": {"backendRefs": [subset("v1")]}},
              {"matches": prefix("/b"), "default": {"backendRefs": [subset("v2")]}}),
        route("aa-high",
              {"matches": [{"path": {"type": "Exact", "value": "/a/exact"}}], "default": {}},
              {"matches": prefix("/a"), "default": {"filters": [{"type": "RequestHeaderModifier",
                                                                 "requestHeaderModifier": {"remove": ["x-a"]}}]}}),
        # entries for other destinations never reach this outbound
        route("elsewhere", {"matches": prefix("/a"), "default": {"backendRefs": [subset("v2")]}},
              to={"kind": "MeshService", "name": "other"}),
        route("real-resource", {"matches": prefix("/a"), "default": {"backendRefs": [subset("v2")]}},
              to={"kind": "MeshService", "name": SERVICE, "sectionName": "http"}),
    ],
    "dropped_backends": [route(
        "dropped",
        {"matches": prefix("/all-zero"), "default": {"backendRefs": [subset("v1", 0), subset("v2", 0)]}},
        {"matches": prefix("/external"), "default": {"backendRefs": [
            {"kind": "MeshExternalService", "name": "httpbin"},
            {"kind": "MeshService", "name": SERVICE, "port": 8080}]}},
        {"matches": prefix("/mixed"), "default": {"backendRefs": [
            {"kind": "MeshExternalService", "name": "httpbin", "weight": 5}, subset("v1", 0), subset("v2", 3)]}})],
}


def build(case: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    policies = [parse_meshhttproute(p) for p in CASES[case]]
    rules = destination_rules(matched("MeshHTTPRoute", policies), SERVICE)
    rc, used = outbound_routes(f"outbound:{SERVICE}", SERVICE, rules, SERVICE)
    refs = [BackendRef(kind="MeshService", name=SERVICE), *used]
    clusters, assignments = backend_resources(refs, DATAPLANES, mesh="default", mtls=False,
                                              protocols={SERVICE: "http", "shadow": "http"})
    return rc, clusters, assignments


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    rc, clusters, assignments = build(case)
    assert_golden_file({"routeConfiguration": to_plain(rc),
                   "clusters": {n: to_plain(c) for n, c in clusters.items()},
                   "endpoints": {n: to_plain(a) for n, a in assignments.items()}},
                  TESTDATA / f"{case}.golden.yaml")


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Path) -> None:
    rc, clusters, assignments = build(case)
    envoy_validate(bootstrap([hcm(rc)], static_clusters(clusters, assignments)), tmp_path)
