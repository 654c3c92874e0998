"""Real Envoy, real requests: a MeshHTTPRoute's RouteConfiguration, served by an outbound HCM, routes by path
(whole segments), method, header and query parameter, splits to tag subsets whose endpoints were selected by tags,
rewrites and redirects paths, sets response headers and mirrors requests to a subset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from route_testlib import bootstrap, hcm, running_envoy, static_clusters
from testlib import HttpApp, free_port, wait_for

from dpagent.controlplane.policies.meshhttproute.api import parse_meshhttproute, to_rules
from dpagent.controlplane.policies.meshhttproute.ordering import merge_rules, route_entries
from dpagent.controlplane.policies.meshhttproute.routes import clusters_used, route_configuration
from dpagent.controlplane.policies.meshroute.backends import backend_resources
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.model.dataplane import decode_dataplane

pytestmark = pytest.mark.envoy


def subset(version: str, weight: int = 1) -> dict[str, Any]:
    return {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": version}, "weight": weight}


POLICY = {"type": "MeshHTTPRoute", "name": "traffic", "mesh": "default", "spec": {"to": [{
    "targetRef": {"kind": "MeshService", "name": "backend"},
    "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "default": {
            "filters": [{"type": "URLRewrite", "urlRewrite": {
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2api"}}}],
            "backendRefs": [subset("v2")]}},
        {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "default": {"filters": [
            {"type": "RequestRedirect", "requestRedirect": {
                "statusCode": 301, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}], "default": {"filters": [
            {"type": "RequestRedirect", "requestRedirect": {
                "hostname": "example.com", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/modern"}}}]}},
        {"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}], "default": {
            "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "x-routed", "value": "beta"}]}}],
            "backendRefs": [subset("v1")]}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}], "default": {
            "backendRefs": [subset("v1", 1), subset("v2", 0)]}},
        {"matches": [{"queryParams": [{"type": "Exact", "name": "beta", "value": "yes"}]}], "default": {
            "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "x-routed", "value": "query"}]}}],
            "backendRefs": [subset("v2")]}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/mirror"}}], "default": {
            "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": subset("v2")}}],
            "backendRefs": [subset("v1")]}},
        {"matches": [{"path": {"type": "RegularExpression", "value": "^/items/[0-9]+$"}, "method": "GET"}],
         "default": {"filters": [{"type": "URLRewrite", "urlRewrite": {
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/item"}}}], "backendRefs": [subset("v2")]}},
    ]}]}}


SEEN_BY_V2: list[str] = []  # paths v2 answered, mirrored copies included


def _v2(path: str, _: Any) -> tuple[bytes, None]:
    SEEN_BY_V2.append(path)
    return f"v2 {path}".encode(), None


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    v1, v2 = HttpApp("v1"), HttpApp("v2", _v2)
    dataplanes = [decode_dataplane({"mesh": "default", "name": f"backend-{v}", "networking": {
        "address": "127.0.0.1", "inbound": [{"port": app.port, "tags": {
            "kuma.io/service": "backend", "kuma.io/protocol": "http", "version": v}}]}})
        for v, app in (("v1", v1), ("v2", v2))]
    entries = route_entries(merge_rules([to_rules(parse_meshhttproute(POLICY).to[0].conf)]))
    rc = route_configuration("outbound:backend", "backend", entries, "backend")
    clusters, assignments = backend_resources([BackendRef(kind="MeshService", name="backend"),
                                               *clusters_used(entries)], dataplanes, mesh="default", mtls=False,
                                              protocols={"backend": "http"})
    port = free_port()
    config = bootstrap([hcm(rc)], static_clusters(clusters, assignments), port)
    with running_envoy(config, tmp_path_factory.mktemp("envoy"), port):
        yield f"http://127.0.0.1:{port}"
    for app in (v1, v2):
        app.httpd.shutdown()
        app.httpd.server_close()


def get(url: str, path: str, **headers: str) -> httpx.Response:
    return httpx.get(url + path, headers=headers, timeout=5, follow_redirects=False)


def test_prefix_matches_whole_segments_and_rewrites_to_a_subset(url: str) -> None:
    assert get(url, "/api/x/y").text == "v2 /v2api/x/y"
    assert get(url, "/api").text == "v2 /v2api"
    other = get(url, "/apix").text  # not under /api: the catch-all to the whole service
    assert other in ("v1 /apix", "v2 /apix")


def test_redirects(url: str) -> None:
    r = get(url, "/old?q=1")
    assert r.status_code == 301 and r.headers["location"].endswith("/new?q=1"), r.headers
    r = get(url, "/legacy/a/b")
    assert r.status_code == 302 and r.headers["location"] == "http://example.com/modern/a/b"
    assert get(url, "/legacy").headers["location"] == "http://example.com/modern"


def test_header_match_response_header_and_weights(url: str) -> None:
    r = get(url, "/anything", **{"x-beta": "1"})
    assert r.text == "v1 /anything" and r.headers["x-routed"] == "beta"
    assert "x-routed" not in get(url, "/anything").headers
    assert {get(url, "/split").text for _ in range(20)} == {"v1 /split"}  # weight 0 never gets traffic


def test_regex_with_method_and_full_path_rewrite(url: str) -> None:
    assert get(url, "/items/42").text == "v2 /item"
    assert httpx.post(url + "/items/42", timeout=5).status_code == 501  # POST: catch-all; HttpApp has no POST
    assert get(url, "/items/x").text in ("v1 /items/x", "v2 /items/x")


def test_query_param_match(url: str) -> None:
    r = get(url, "/q?beta=yes")
    assert r.text == "v2 /q?beta=yes" and r.headers["x-routed"] == "query"
    assert "x-routed" not in get(url, "/q?beta=no").headers


def test_request_mirror_sends_a_copy_to_the_subset(url: str) -> None:
    """The client's answer comes from v1; v2 receives the mirrored copy (Envoy sends it without waiting)."""
    SEEN_BY_V2.clear()
    for i in range(5):
        assert get(url, f"/mirror/{i}").text == f"v1 /mirror/{i}"
    wait_for(lambda: sorted(p for p in SEEN_BY_V2 if p.startswith("/mirror/")) == [f"/mirror/{i}" for i in range(5)],
             5, what="every mirrored request at v2")
