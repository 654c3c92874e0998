"""MeshProxyPatch through a real mesh: backend-1 behind web-1 and web-2, every Envoy started by its agent.

A virtual-host patch on backend-1's inbound makes its Envoy add a response header the clients see. A cluster patch
Envoy must refuse (a zero connect timeout) on web-1 shows up in web-1's `inspect` with Envoy's own error while
web-1 keeps serving with its previous clusters, and web-2, which the patch does not select, keeps taking updates.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import (
    CLUSTER,
    dataplane,
    delete,
    outbound,
    put,
    put_acked,
    start_dataplanes,
    url,
    wait_instances,
    xds_status,
)
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "w1_in", "w1_out", "w2_in", "w2_out")}
URL1, URL2 = url(PORTS["w1_out"]), url(PORTS["w2_out"])

# Kuma's shape: value as a YAML block string, matched by origin.
HEADER_PATCH = {"type": "MeshProxyPatch", "mesh": "default", "name": "backend-header", "spec": {
    "targetRef": {"kind": "MeshService", "name": "backend"},
    "default": {"appendModifications": [{"virtualHost": {
        "operation": "Patch", "match": {"origin": "inbound"},
        "value": "responseHeadersToAdd:\n- header:\n    key: x-patched-by\n    value: meshproxypatch\n"}}]}}}


def bad_timeout(name: str, dp: str) -> dict[str, Any]:
    """Valid protobuf, refused by Envoy's own validation: connect_timeout must be greater than 0."""
    return {"type": "MeshProxyPatch", "mesh": "default", "name": name, "spec": {
        "targetRef": {"kind": "Dataplane", "name": dp},
        "default": {"appendModifications": [{"cluster": {
            "operation": "Patch", "match": {"origin": "outbound", "name": "backend"},
            "jsonPatches": [{"op": "replace", "path": "/connectTimeout", "value": "0s"}]}}]}}}


@pytest.fixture(scope="module")
def mesh(cp, agents):
    app = BackendApp("b1")
    start_dataplanes(agents, {
        "backend-1": dataplane("backend-1", "backend", PORTS["b_in"], app.port),
        "web-1": dataplane("web-1", "web", PORTS["w1_in"], 1, outbound=outbound(backend=PORTS["w1_out"])),
        "web-2": dataplane("web-2", "web2", PORTS["w2_in"], 1, outbound=outbound(backend=PORTS["w2_out"]))})
    wait_instances(URL1, {"b1"}, tries=1, what="web-1 -> backend through the mesh")
    wait_instances(URL2, {"b1"}, tries=1, what="web-2 -> backend through the mesh")
    yield app
    app.close()


def test_virtual_host_patch_adds_a_response_header(mesh, cp):
    with httpx.Client(timeout=3) as client:
        assert "x-patched-by" not in client.get(URL1).headers
        put(cp, HEADER_PATCH)
        wait_for(lambda: client.get(URL1).headers.get("x-patched-by") == "meshproxypatch", 15,
                 what="backend-1's Envoy adding the patched header")
        assert client.get(URL2).headers.get("x-patched-by") == "meshproxypatch"  # set by backend, seen by both
        delete(cp, "MeshProxyPatch", HEADER_PATCH["name"])
        wait_for(lambda: "x-patched-by" not in client.get(URL1).headers, 15, what="header gone with the policy")


def test_nacked_patch_shows_in_inspect_and_blocks_no_one(mesh, cp):
    def nack() -> str:
        s = xds_status(cp, "web-1")
        return ((s.get("nack") or {}).get("error", "")
                if s.get("snapshot_version") == s.get("sent_version") else "")

    try:
        put(cp, bad_timeout("bad-timeout", "web-1"))
        error = wait_for(nack, 15, what="web-1's Envoy refusing the patched cluster, in inspect")
        print("inspect shows web-1's CDS NACK:", error)
        assert "connect_timeout" in error or "ConnectTimeout" in error, error
        with httpx.Client(timeout=3) as client:
            assert all(client.get(URL1).headers.get("x-instance") == "b1" for _ in range(5))  # old config serves
            # web-2 is not selected: no NACK, and it still takes a new config (its own, valid patch)
            assert not (xds_status(cp, "web-2").get("nack") or {}).get("error")
            good = bad_timeout("web2-timeout", "web-2")
            good["spec"]["default"]["appendModifications"][0]["cluster"]["jsonPatches"][0]["value"] = "3s"
            put_acked(cp, good, "web-2's patched cluster", dataplanes=("web-2",))
            assert xds_status(cp, "web-2").get("acked_version") == xds_status(cp, "web-2").get("snapshot_version")
            assert client.get(URL2).headers.get("x-instance") == "b1"
        delete(cp, "MeshProxyPatch", "bad-timeout")

        def in_sync() -> bool:
            s = xds_status(cp, "web-1", CLUSTER)
            return s.get("acked_version") == s.get("snapshot_version")

        wait_for(in_sync, 15, what="web-1 ACKing the config without the bad patch")
    finally:
        delete(cp, "MeshProxyPatch", "bad-timeout")
        delete(cp, "MeshProxyPatch", "web2-timeout")
