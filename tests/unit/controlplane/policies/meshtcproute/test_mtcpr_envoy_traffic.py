"""Real Envoy, real connections: a MeshTCPRoute turns an HTTP destination's outbound listener into plain L4
(the tcp_proxy that replaces the outbound's filters) and spreads connections over tag subsets by weight; a zero
weight gets nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from route_testlib import bootstrap, matched, running_envoy, static_clusters
from testlib import HttpApp, free_port

from dpagent.controlplane.policies.meshroute.backends import backend_resources
from dpagent.controlplane.policies.meshtcproute.api import parse_meshtcproute
from dpagent.controlplane.policies.meshtcproute.tcp import destination_rules, outbound_tcp_proxy
from dpagent.model.dataplane import decode_dataplane

pytestmark = pytest.mark.envoy


def subset(version: str, weight: int) -> dict[str, Any]:
    return {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": version}, "weight": weight}


def policy(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTCPRoute", "name": "r", "mesh": "default", "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": "backend"},
         "rules": [{"default": {"backendRefs": list(refs)}}]}]}}


@pytest.fixture(scope="module")
def apps() -> Iterator[list[Any]]:
    v1, v2 = HttpApp("v1"), HttpApp("v2")
    dataplanes = [decode_dataplane({"mesh": "default", "name": f"backend-{v}", "networking": {
        "address": "127.0.0.1", "inbound": [{"port": app.port, "tags": {
            "kuma.io/service": "backend", "kuma.io/protocol": "http", "version": v}}]}})
        for v, app in (("v1", v1), ("v2", v2))]
    yield dataplanes
    for app in (v1, v2):
        app.httpd.shutdown()
        app.httpd.server_close()


@pytest.mark.parametrize(("weights", "expected"), [((1, 0), {"v1 /"}), ((1, 1), {"v1 /", "v2 /"})])
def test_weighted_subsets(apps: list[Any], tmp_path: Any, weights: tuple[int, int], expected: set[str]) -> None:
    route = parse_meshtcproute(policy(subset("v1", weights[0]), subset("v2", weights[1])))
    flt, used = outbound_tcp_proxy("outbound_backend", destination_rules(matched("MeshTCPRoute", [route]), "backend"),
                                   "backend")
    assert flt is not None
    clusters, assignments = backend_resources(used, apps, mesh="default", mtls=False, protocols={"backend": "http"})
    port = free_port()
    config = bootstrap([flt], static_clusters(clusters, assignments), port)
    with running_envoy(config, tmp_path, port):
        seen = {httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text for _ in range(40)}
    assert seen == expected
