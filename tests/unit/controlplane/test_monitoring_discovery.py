"""Prometheus target discovery over the real REST API: HTTP SD groups with mesh/service/zone/dataplane and the
scrape path, MADS answering as Prometheus' Kuma SD expects (proto-JSON DiscoveryResponse, 304 after a held
long-poll with no change, an early answer when a dataplane leaves), clientId filtering and authentication."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dpagent.controlplane import authz as api_mod
from dpagent.controlplane.api import Api
from dpagent.controlplane.monitoring import MADS_PATH, MADS_TYPE_URL, MonitoringDiscovery
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.sync import XdsSync

MESH = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"]}


def dp(name: str, service: str, address: str, zone: str = "") -> dict[str, Any]:
    tags = {"kuma.io/service": service, **({"kuma.io/zone": zone} if zone else {})}
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": address, "inbound": [{"port": 8080, "tags": tags}]}}


MM = {"type": "MeshMetric", "mesh": "default", "name": "all", "spec": {"default": {
    "backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "path": "/metrics"}},
                 {"type": "Prometheus", "prometheus": {"port": 5671, "path": "/other", "clientId": "special"}}]}}}


@pytest.fixture
async def env() -> AsyncIterator[tuple[TestClient[Any, Any], XdsSync]]:
    store = await MemoryStore.open()
    sync = XdsSync(store, SnapshotCache(), debounce=0.01)
    runner = asyncio.create_task(sync.run())
    api = Api(Resources(store), admin_token="secret-token")
    app = api.app()
    MonitoringDiscovery(store, sync.state, sync.leaving).add_routes(app)
    async with TestClient(TestServer(app)) as c:
        for path, doc in (("/meshes/default", MESH),
                          ("/meshes/default/dataplanes/web-1", dp("web-1", "web", "10.0.0.1", "zone-a")),
                          ("/meshes/default/dataplanes/backend-1", dp("backend-1", "backend", "10.0.0.2")),
                          ("/meshes/default/meshmetrics/all", MM)):
            r = await c.put(path, json=doc)
            assert r.status == 201, await r.text()
        await asyncio.sleep(0.1)
        yield c, sync
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await store.close()


async def test_http_sd_groups(env: Any) -> None:
    client, _ = env
    r = await client.get("/prometheus/http_sd")
    assert r.status == 200
    groups = await r.json()
    assert {"targets": ["10.0.0.1:5670"], "labels": {"__metrics_path__": "/metrics", "__scheme__": "http",
                                                     "mesh": "default", "service": "web", "dataplane": "web-1",
                                                     "zone": "zone-a"}} in groups
    assert sorted(g["targets"][0] for g in groups) == ["10.0.0.1:5670", "10.0.0.2:5670"]  # clientId backends: no
    special = await (await client.get("/prometheus/http_sd?clientId=special")).json()
    assert sorted(g["targets"][0] for g in special) == ["10.0.0.1:5670", "10.0.0.1:5671", "10.0.0.2:5670",
                                                         "10.0.0.2:5671"]


def request(version: str = "", nonce: str = "", client: str = "prometheus") -> dict[str, Any]:
    """What Prometheus' HTTPResourceClient.Fetch sends (protojson with proto field names)."""
    return {"version_info": version, "response_nonce": nonce, "type_url": MADS_TYPE_URL, "resource_names": [],
            "node": {"id": client}}


async def test_mads_long_poll_and_leave(env: Any) -> None:
    client, sync = env
    r = await client.post(f"{MADS_PATH}?fetch-timeout=2m0s", json=request(),
                          headers={"accept": "application/json"})
    assert r.status == 200
    first = await r.json()
    assert first["type_url"] == MADS_TYPE_URL and first["version_info"] and first["nonce"]
    web = next(a for a in first["resources"] if a["service"] == "web")
    assert web == {"@type": MADS_TYPE_URL, "mesh": "default", "service": "web",
                   "labels": {"kuma_io_service": "web", "kuma_io_zone": "zone-a"},
                   "targets": [{"name": "web-1", "scheme": "http", "address": "10.0.0.1:5670",
                                "metrics_path": "/metrics", "labels": {}}]}
    t0 = time.monotonic()
    r = await client.post(f"{MADS_PATH}?fetch-timeout=1s", json=request(first["version_info"], first["nonce"]))
    assert r.status == 304 and time.monotonic() - t0 >= 0.9  # held until the fetch timeout, nothing changed

    async def leave_soon() -> None:
        await asyncio.sleep(0.5)
        sync.set_leaving("default", "backend-1", True)

    leaver = asyncio.create_task(leave_soon())
    t0 = time.monotonic()
    r = await client.post(f"{MADS_PATH}?fetch-timeout=10s", json=request(first["version_info"], first["nonce"]))
    await leaver
    assert r.status == 200 and time.monotonic() - t0 < 3  # answered as soon as the target set changed
    assert [a["targets"][0]["name"] for a in (await r.json())["resources"]] == ["web-1"]
    sd = await (await client.get("/prometheus/http_sd")).json()
    assert [g["labels"]["dataplane"] for g in sd] == ["web-1"]


async def test_a_departed_dataplane_stays_out_while_its_deletion_is_applied(env: Any) -> None:
    """Deregistration ends the drain (the departure record goes) about when the Dataplane goes; until the state
    without that Dataplane is in place the target must not come back."""
    client, sync = env
    sync.set_leaving("default", "backend-1", True)
    await asyncio.sleep(0.2)  # the state is rebuilt with backend-1 draining
    sync._wake.clear()
    sync.leaving.discard(("default", "backend-1"))  # the record is gone; the rebuild without backend-1 is not yet
    sd = await (await client.get("/prometheus/http_sd")).json()
    assert [g["labels"]["dataplane"] for g in sd] == ["web-1"]


async def test_bad_request_and_authentication(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = env
    r = await client.post(f"{MADS_PATH}?fetch-timeout=soon", json=request())
    assert r.status == 400
    monkeypatch.setattr(api_mod, "is_loopback", lambda remote: False)  # as if Prometheus ran on another host
    assert (await client.get("/prometheus/http_sd")).status == 401
    assert (await client.post(MADS_PATH, json=request())).status == 401
    ok = await client.get("/prometheus/http_sd", headers={"authorization": "Bearer secret-token"})
    assert ok.status == 200


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"node": ' * 5_000 + b"1" + b"}" * 5_000,
                                  b"\xff\xfe not json"])
async def test_hostile_mads_bodies_are_a_400(env: Any, body: bytes) -> None:
    """As on the REST API (issue 9, item 9): JSON nested past the interpreter's recursion limit was a 500 with a
    RecursionError traceback on the discovery endpoint Prometheus polls."""
    client, _ = env
    r = await client.post(MADS_PATH, data=body, headers={"content-type": "application/json"})
    assert r.status == 400, await r.text()
