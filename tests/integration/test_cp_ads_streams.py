"""The ADS front door of a real control plane (`dpagent cp run`: TLS, tokens, store) against Envoy-like gRPC clients.

Covers what a network blip does: a proxy opens its new stream before the CP notices the old one is dead, so for a
while one node has two streams; the end of the older one must neither stop pushes to the newer one nor
deregister the proxy. Also: node ids of meshes with dots in their names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from testlib import LocalControlPlane, free_port, terminate, wait_for

from dpagent.controlplane.xds import nodeid
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER

DEREGISTRATION_DELAY = 0.3


def dataplane(name: str, mesh: str = "default", service: str = "backend") -> dict[str, Any]:
    # TCP: a permission change then rewrites the inbound listener itself (HTTP permissions travel over RDS, which
    # these LDS/CDS-only clients do not subscribe to), so a push is visible as a new LDS version.
    return {"type": "Dataplane", "mesh": mesh, "name": name, "networking": {"address": "127.0.0.1", "inbound": [
        {"port": free_port(), "servicePort": 9, "tags": {"kuma.io/service": service, "kuma.io/protocol": "tcp"}}]}}


DENY = {"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-web", "spec": {
    "targetRef": {"kind": "MeshService", "name": "backend"},
    "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}}


class Cp(LocalControlPlane):
    """`dpagent cp run` in a child process with short deregistration and token re-check intervals."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.log = data_dir.parent / "cp.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                self.command(sys.executable, "--deregistration-delay", f"{DEREGISTRATION_DELAY}s",
                             "--token-recheck-interval", "200ms"),
                stdout=out, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items()
                                                           if not k.startswith(("KUMA_", "DPAGENT_"))})
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 30, what=f"CP API (log {self.log})")
        self.xds = f"127.0.0.1:{self.xds_port}"

    def stop(self) -> None:
        terminate(self.proc)

    async def put(self, doc: dict[str, Any]) -> None:
        path = f"/meshes/{doc['name']}" if doc["type"] == "Mesh" else \
            f"/meshes/{doc['mesh']}/{'dataplanes' if doc['type'] == 'Dataplane' else 'meshtrafficpermissions'}/" \
            f"{doc['name']}"
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as api:
            r = await api.put(path, json=doc)
        assert r.status_code in (200, 201), r.text

    async def token(self, name: str, mesh: str = "default") -> str:
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as api:
            r = await api.post("/tokens/dataplane", json={"name": name, "mesh": mesh, "validFor": "1h"})
        assert r.status_code == 200, r.text
        return r.text.strip()

    async def exists(self, name: str, mesh: str = "default") -> bool:
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as api:
            return (await api.get(f"/meshes/{mesh}/dataplanes/{name}")).status_code == 200

    async def inspect(self, name: str, mesh: str = "default") -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as api:
            return (await api.get(f"/meshes/{mesh}/dataplanes/{name}/_inspect")).json()

    def channel(self) -> grpc.aio.Channel:
        """Its own TCP connection, as each Envoy (and each of its reconnects) has."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_file.read_bytes())
        return grpc.aio.secure_channel(self.xds, creds, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cp]:
    plane = Cp(tmp_path_factory.mktemp("cp") / "data")
    yield plane
    plane.stop()


class Proxy:
    """One ADS stream that behaves like Envoy: CDS and LDS wildcards, every response ACKed."""

    def __init__(self, channel: grpc.aio.Channel, node: str, token: str, *, direct: bool = False) -> None:
        self.channel = channel
        self.node = base_pb2.Node(id=node, cluster="backend")
        if direct:
            self.node.metadata.update({"dataplane.resource": "{}"})
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=(("authorization", token),))
        self.versions: dict[str, str] = {}
        self.updated = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=self.node))
        await self.call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        async for resp in self.call:
            self.versions[resp.type_url] = resp.version_info
            self.updated.set()
            await self.call.write(discovery_pb2.DiscoveryRequest(
                type_url=resp.type_url, version_info=resp.version_info, response_nonce=resp.nonce))

    async def synced(self) -> None:
        async with asyncio.timeout(10):
            while LISTENER not in self.versions or CLUSTER not in self.versions:
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"stream ended: {await self.call.details()}")
                await asyncio.sleep(0.02)

    async def goodbye(self) -> None:
        """Half-close like an Envoy that shuts down in order, then wait for the CP to end the call."""
        await self.call.done_writing()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)

    async def vanish(self) -> None:
        """The connection dies (the CP sees the stream reset, not a goodbye)."""
        self.call.cancel()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await self.task
        await self.channel.close()

    def alive(self) -> bool:
        return not self.task.done()


async def eventually(check: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)
    assert await check(), what


async def test_pushes_reach_the_live_stream_after_the_older_one_dies(cp: Cp):
    await cp.put(dataplane("backend-1"))
    token = await cp.token("backend-1")
    old = Proxy(cp.channel(), "default.backend-1", token)
    await old.synced()
    new = Proxy(cp.channel(), "default.backend-1", token)  # reconnected before the CP saw the old one die
    await new.synced()
    assert (await cp.inspect("backend-1"))["xds"]["streams"] == 2
    await old.vanish()
    await eventually(lambda: _streams(cp, "backend-1", 1), 5, "the old stream is gone")
    before = new.versions[LISTENER]
    new.updated.clear()
    await cp.put(DENY)

    async def deny_delivered() -> bool:
        return new.versions[LISTENER] != before

    await eventually(deny_delivered, 5, "the Deny reached the live stream")
    info = await cp.inspect("backend-1")
    assert info["xds"]["connected"] and info["xds"]["types"][LISTENER]["acked_version"] == new.versions[LISTENER]


async def test_older_streams_goodbye_does_not_deregister_the_live_proxy(cp: Cp):
    await cp.put(dataplane("direct-1"))
    token = await cp.token("direct-1")
    old = Proxy(cp.channel(), "default.direct-1", token, direct=True)
    await old.synced()
    new = Proxy(cp.channel(), "default.direct-1", token, direct=True)
    await new.synced()
    await old.goodbye()
    await asyncio.sleep(DEREGISTRATION_DELAY * 5)  # several delays and token re-checks
    assert await cp.exists("direct-1"), "the proxy's Dataplane was deleted while it has a live stream"
    assert new.alive() and (await cp.inspect("direct-1"))["xds"]["connected"]
    # Only when its last stream says goodbye does a directly registered proxy go.
    await new.goodbye()

    async def gone() -> bool:
        return not await cp.exists("direct-1")

    await eventually(gone, DEREGISTRATION_DELAY * 10, "deregistered after the last stream's goodbye")


async def test_dotted_mesh_names_give_distinct_node_ids_and_old_ids_still_connect(cp: Cp):
    """Mesh `x.y` + dataplane `z` and mesh `x` + dataplane `y.z` used to share the node id `x.y.z`."""
    for mesh in ("x.y", "x"):
        await cp.put({"type": "Mesh", "name": mesh})
    await cp.put(dataplane("z", mesh="x.y"))
    await cp.put(dataplane("y.z", mesh="x"))
    a_id, b_id = nodeid.node_id("x.y", "z"), nodeid.node_id("x", "y.z")
    assert a_id != b_id and b_id == "x.y.z", "a mesh without a dot keeps Kuma's id"
    a = Proxy(cp.channel(), a_id, await cp.token("z", mesh="x.y"))
    b = Proxy(cp.channel(), b_id, await cp.token("y.z", mesh="x"))
    await a.synced()
    await b.synced()
    assert (await cp.inspect("z", mesh="x.y"))["xds"]["connected"]
    assert (await cp.inspect("y.z", mesh="x"))["xds"]["connected"]
    await a.vanish()
    await eventually(lambda: _streams(cp, "z", 0, mesh="x.y"), 5, "a's stream is gone")
    # An Envoy still running with a bootstrap from the previous CP sends the old, ambiguous id; its token decides.
    legacy = Proxy(cp.channel(), "x.y.z", await cp.token("z", mesh="x.y"))
    await legacy.synced()
    assert (await cp.inspect("z", mesh="x.y"))["xds"]["connected"]
    assert (await cp.inspect("y.z", mesh="x"))["xds"]["streams"] == 1


async def _streams(cp: Cp, name: str, n: int, mesh: str = "default") -> bool:
    return (await cp.inspect(name, mesh=mesh))["xds"].get("streams") == n


def test_render_uses_the_unambiguous_node_id():
    from dpagent.controlplane.xds.bootstrap import BootstrapParams, render_bootstrap

    boot = render_bootstrap(BootstrapParams(mesh="x.y", name="z", xds_host="127.0.0.1", xds_port=1, ca_pem=""))
    assert boot["node"]["id"] == "x%2Ey.z"
    assert nodeid.parse(boot["node"]["id"]) == ("x.y", "z")
    assert nodeid.parse(nodeid.node_id("a%b.c", "d.e")) == ("a%b.c", "d.e")
    json.dumps(boot)


def test_an_id_offers_only_a_few_readings():
    """Each reading is a store lookup before authentication: a crafted id with many dots must stay cheap."""
    assert len(nodeid.candidates("a." * 400 + "b")) == nodeid.MAX_READINGS
    assert nodeid.candidates("x" * (nodeid.MAX_LENGTH + 1) + ".y") == []
    assert nodeid.candidates("x%2Ey.z")[0] == ("x.y", "z")


async def test_live_streams_end_when_their_dataplane_is_deleted_or_their_token_revoked(cp: Cp):
    """Re-checks read cached Dataplanes that the store's events keep current (one sweep for every stream, no
    store read per stream): a deletion or a revocation must still end the stream within a re-check or two."""
    await cp.put(dataplane("gone-1"))
    await cp.put(dataplane("revoked-1"))
    gone = Proxy(cp.channel(), "default.gone-1", await cp.token("gone-1"))
    token = await cp.token("revoked-1")
    revoked = Proxy(cp.channel(), "default.revoked-1", token)
    await gone.synced()
    await revoked.synced()
    await asyncio.sleep(0.5)  # a few re-checks pass while nothing changes: both stay
    assert gone.alive() and revoked.alive()
    async with httpx.AsyncClient(base_url=cp.api, timeout=10) as api:
        assert (await api.delete("/meshes/default/dataplanes/gone-1")).status_code == 200
        r = await api.post("/tokens/dataplane/revocations", json={"mesh": "default", "token": token})
        assert r.status_code == 200, r.text
    for proxy, why in ((gone, "was deleted"), (revoked, "revoked")):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(proxy.task, 3)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in (exc.value.details() or ""), \
            exc.value.details()


async def test_refusals_without_a_valid_token_do_not_tell_which_dataplanes_exist(cp: Cp):
    """As on the DP server (issue 9, item 16): ADS looked the node id up before checking the token, so a caller
    with no valid token got "no Dataplane for node id" for a name that does not exist and "authentication failed"
    for one that does."""
    await cp.put(dataplane("listed-1"))
    other = await cp.token("someone-else")  # valid for the mesh, but for another dataplane

    async def refusal(node: str, token: str) -> tuple[grpc.StatusCode, str]:
        channel = cp.channel()
        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id=node, cluster="backend"))
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter([first]), metadata=(("authorization", token),))
        code, details = await asyncio.wait_for(call.code(), 5), await call.details()
        await channel.close()
        return code, (details or "").replace(node.split(".", 1)[1], "NAME")

    for token in ("a.b.c", "garbage", "Bearer x"):
        known = await refusal("default.listed-1", token)
        unknown = await refusal("default.unlisted-1", token)
        assert known == unknown and known[0] == grpc.StatusCode.UNAUTHENTICATED, (token, known, unknown)
        assert "no Dataplane" not in known[1], known
    # A caller holding a valid token of the mesh still learns what it needs to fix its own setup.
    code, details = await refusal("default.unlisted-1", other)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "no Dataplane for node id" in details, details
