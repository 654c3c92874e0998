"""ADS stream semantics against a grpc.aio client that behaves like Envoy (nonces, ACK/NACK, subscriptions)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.server import AdsServer, StreamError, _Rechecker, serve
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Snapshot


def snap(clusters=("a",), listeners=("l",), clas=("a",), timeout=5) -> Snapshot:
    return Snapshot.build({
        CLUSTER: {n: cluster_pb2.Cluster(name=n, connect_timeout=duration_pb2.Duration(seconds=timeout))
                  for n in clusters},
        ENDPOINT: {n: endpoint_pb2.ClusterLoadAssignment(cluster_name=n) for n in clas},
        LISTENER: {n: listener_pb2.Listener(name=n) for n in listeners},
    })


async def until(cond, timeout: float = 5.0) -> None:
    """Poll instead of sleeping a fixed time: the suite runs on 2 loaded cores."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


class FakeEnvoy:
    """One ADS stream; responses are drained by a task so a read can time out without cancelling the call."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, token: str = "good") -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.node_id = node_id
        self.call = stub.StreamAggregatedResources(metadata=(("authorization", token),))
        self.responses: asyncio.Queue = asyncio.Queue()
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}
        self._drain = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        async for resp in self.call:
            await self.responses.put(resp)

    async def send(self, type_url, version="", nonce="", names=(), error=None, node_id=None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce,
                                             resource_names=list(names),
                                             node=base_pb2.Node(id=node_id or self.node_id))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.responses.get(), timeout)
        self.last[resp.type_url] = resp
        return resp

    async def nothing(self, wait: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(wait)

    async def ack(self, resp: discovery_pb2.DiscoveryResponse, names=()) -> None:
        await self.send(resp.type_url, resp.version_info, resp.nonce, names)

    async def status(self) -> grpc.StatusCode:
        await asyncio.wait_for(asyncio.gather(self._drain, return_exceptions=True), 5)
        return await self.call.code()

    def names(self, resp: discovery_pb2.DiscoveryResponse) -> list[str]:
        msg = {CLUSTER: cluster_pb2.Cluster, ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
               LISTENER: listener_pb2.Listener}[resp.type_url]
        return [getattr(msg.FromString(a.value), "cluster_name" if resp.type_url == ENDPOINT else "name")
                for a in resp.resources]


class Harness:
    def __init__(self, **kw) -> None:
        self.cache = SnapshotCache()
        self.events: list[tuple] = []
        self.revoked: set[str] = set()

        async def authenticate(metadata: dict[str, str], node: base_pb2.Node) -> str:
            if metadata.get("authorization") != "good":
                raise PermissionError("authentication failed: token is not valid")
            return node.id

        async def revalidate(node_id: str) -> None:
            if node_id in self.revoked:
                raise PermissionError("token revoked")

        async def on_connect(node_id: str, stream_id: int, auth: str) -> None:
            self.events.append(("connect", node_id, auth))
            self.stream_ids.append(stream_id)

        async def on_disconnect(node_id: str, stream_id: int, graceful: bool) -> None:
            self.events.append(("disconnect", node_id, graceful))
            self.stream_ids.append(stream_id)

        self.stream_ids: list[int] = []
        self.serve_kw = {k: kw.pop(k) for k in ("max_streams_per_connection",) if k in kw}
        kw.setdefault("nack_backoff", 0.3)
        self.ads = AdsServer(self.cache, authenticate, revalidate=revalidate, on_connect=on_connect,
                             on_disconnect=on_disconnect, **kw)


@pytest.fixture
async def env(request) -> AsyncIterator[tuple[Harness, grpc.aio.Channel]]:
    h = Harness(**getattr(request, "param", {}))
    server = await serve(h.ads, "127.0.0.1", 0, **h.serve_kw)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{h.ads.bound_port}")
    yield h, channel
    await channel.close()
    await server.stop(0)


async def test_initial_request_ack_push_and_identical_snapshot(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    r1 = await envoy.recv()
    assert r1.type_url == CLUSTER and envoy.names(r1) == ["a"] and r1.version_info == snap().version(CLUSTER)
    await envoy.ack(r1)
    await envoy.nothing(0.1)
    assert h.cache.status("p1")["types"][CLUSTER]["acked_version"] == r1.version_info

    assert h.cache.set_snapshot("p1", snap()) == []
    await envoy.nothing()
    h.cache.set_snapshot("p1", snap(clusters=("a", "b")))
    r2 = await envoy.recv()
    assert envoy.names(r2) == ["a", "b"] and r2.nonce != r1.nonce
    await envoy.ack(r2)
    await asyncio.sleep(0.05)
    st = h.cache.status("p1")
    assert st["connected"] and st["types"][CLUSTER]["acked_version"] == r2.version_info
    assert st["types"][CLUSTER]["pushes"] == 2
    await envoy.call.done_writing()
    assert await envoy.status() == grpc.StatusCode.OK


async def test_nack_is_recorded_not_resent_and_backoff_delays_next_version(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    r1 = await envoy.recv()
    await envoy.ack(r1)
    # Wait until the ACK is processed: an ACK that arrives after the next push carries a stale nonce and is ignored.
    for _ in range(100):
        if h.cache.status("p1")["types"][CLUSTER]["acked_version"] == r1.version_info:
            break
        await asyncio.sleep(0.01)
    h.cache.set_snapshot("p1", snap(timeout=6))
    r2 = await envoy.recv()
    nacked_at = time.monotonic()
    await envoy.send(CLUSTER, r1.version_info, r2.nonce, error="cluster a: bad timeout")
    await envoy.nothing(0.1)  # the rejected version is not sent again
    await asyncio.sleep(0.05)
    nack = h.cache.status("p1")["types"][CLUSTER]["nack"]
    assert nack["version"] == r2.version_info and nack["error"] == "cluster a: bad timeout"
    assert h.cache.status("p1")["types"][CLUSTER]["acked_version"] == r1.version_info
    h.cache.set_snapshot("p1", snap(timeout=7))
    r3 = await envoy.recv()
    assert time.monotonic() - nacked_at >= 0.3 - 0.02
    await envoy.ack(r3)
    await asyncio.sleep(0.05)
    assert h.cache.status("p1")["types"][CLUSTER]["nack"]["version"] == r2.version_info  # history kept
    assert h.cache.status("p1")["types"][CLUSTER]["acked_version"] == r3.version_info


async def test_stale_nonce_is_ignored(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    r1 = await envoy.recv()
    h.cache.set_snapshot("p1", snap(clusters=("a", "b")))
    r2 = await envoy.recv()
    # answers to the superseded response: neither its NACK nor its ACK counts
    await envoy.send(CLUSTER, "", r1.nonce, error="old problem")
    await envoy.ack(r1)
    await envoy.nothing(0.1)
    st = h.cache.status("p1")["types"][CLUSTER]
    assert st["nack"] is None and st["acked_version"] is None
    await envoy.ack(r2)
    await asyncio.sleep(0.05)
    assert h.cache.status("p1")["types"][CLUSTER]["acked_version"] == r2.version_info


async def test_eds_answers_exactly_the_requested_names(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap(clas=("a", "b", "c")))
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(ENDPOINT, names=["a", "b"])
    r1 = await envoy.recv()
    assert envoy.names(r1) == ["a", "b"]
    await envoy.ack(r1, names=["a", "b", "c"])
    r2 = await envoy.recv()
    assert envoy.names(r2) == ["a", "b", "c"] and r2.version_info == snap(clas=("a", "b", "c")).version(ENDPOINT)
    await envoy.ack(r2, names=["a", "b", "c"])
    await envoy.nothing(0.1)
    await envoy.ack(r2, names=[])  # unsubscribe from everything: no answer needed
    await envoy.nothing(0.2)


async def test_cds_before_eds_before_lds_and_unrequested_types_not_sent(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    r = await envoy.recv()
    assert r.type_url == CLUSTER
    await envoy.ack(r)
    await envoy.nothing(0.1)  # LDS and EDS exist in the snapshot but were never asked for
    await envoy.send(LISTENER)
    await envoy.send(ENDPOINT, names=["a", "b"])
    for _ in range(2):
        await envoy.ack(await envoy.recv(), names=["a", "b"])
    await envoy.nothing(0.1)
    h.cache.set_snapshot("p1", snap(clusters=("a", "b"), clas=("a", "b"), listeners=("l", "m")))
    order = [(await envoy.recv()).type_url for _ in range(3)]
    assert order == [CLUSTER, ENDPOINT, LISTENER]


async def test_cds_push_resends_unchanged_eds_so_changed_clusters_finish_warming(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    await envoy.ack(await envoy.recv())
    await envoy.send(ENDPOINT, names=["a"])
    eds = await envoy.recv()
    await envoy.ack(eds, names=["a"])
    await envoy.nothing(0.1)
    h.cache.set_snapshot("p1", snap(timeout=9))  # cluster changes, its endpoints do not
    cds, eds2 = await envoy.recv(), await envoy.recv()
    assert (cds.type_url, eds2.type_url) == (CLUSTER, ENDPOINT)
    assert eds2.version_info == eds.version_info and envoy.names(eds2) == ["a"]
    await envoy.ack(cds)
    await envoy.ack(eds2, names=["a"])
    await envoy.nothing(0.1)


async def test_reconnect_with_current_version_gets_no_resend(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER, version=snap().version(CLUSTER))
    await envoy.nothing(0.2)
    assert h.cache.status("p1")["types"][CLUSTER]["acked_version"] == snap().version(CLUSTER)


async def test_auth_failure_is_unauthenticated_with_message(env):
    h, ch = env
    envoy = FakeEnvoy(ch, "p1", token="bad")
    await envoy.send(CLUSTER)
    assert await envoy.status() == grpc.StatusCode.UNAUTHENTICATED
    assert "token is not valid" in await envoy.call.details()
    assert h.events == []


@pytest.mark.parametrize("env", [{"revalidate_interval": 0.2}], indirect=True)
async def test_revalidate_failure_closes_a_live_stream(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    await envoy.ack(await envoy.recv())
    await asyncio.sleep(0.3)
    assert h.cache.is_connected("p1")
    h.revoked.add("p1")
    started = time.monotonic()
    assert await envoy.status() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 0.5
    assert await envoy.call.details() == "token revoked"
    assert h.events[-1] == ("disconnect", "p1", False)
    assert not h.cache.is_connected("p1")


async def test_node_id_switch_is_rejected(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    envoy = FakeEnvoy(ch, "p1")
    await envoy.send(CLUSTER)
    r = await envoy.recv()
    await envoy.send(CLUSTER, r.version_info, r.nonce, node_id="p2")
    assert await envoy.status() == grpc.StatusCode.PERMISSION_DENIED
    assert "node id changed" in await envoy.call.details()


async def test_connect_and_disconnect_hooks_graceful_and_not(env):
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    a = FakeEnvoy(ch, "p1")
    await a.send(CLUSTER)
    await a.recv()
    assert h.events == [("connect", "p1", "p1")]
    await a.call.done_writing()
    await a.status()
    await until(lambda: h.events[-1][:2] == ("disconnect", "p1"))
    assert h.events[-1] == ("disconnect", "p1", True)

    b = FakeEnvoy(ch, "p2")
    await b.send(CLUSTER)
    await until(lambda: h.cache.is_connected("p2"))
    b.call.cancel()
    await until(lambda: h.events[-1][:2] == ("disconnect", "p2") and not h.cache.is_connected("p2"))
    assert h.events[-1] == ("disconnect", "p2", False)


async def test_delta_is_unimplemented_and_missing_node_is_invalid(env):
    _, ch = env
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
    delta = stub.DeltaAggregatedResources()
    with contextlib.suppress(grpc.aio.AioRpcError):  # the server may refuse before the write lands
        await delta.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER))
    assert await delta.code() == grpc.StatusCode.UNIMPLEMENTED
    sotw = stub.StreamAggregatedResources(metadata=(("authorization", "good"),))
    await sotw.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    assert await sotw.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_two_streams_of_one_node_are_tracked_apart_and_both_get_pushes(env):
    """A proxy that reconnects before its old connection is seen to die has two streams for a while."""
    h, ch = env
    h.cache.set_snapshot("p1", snap())
    old = FakeEnvoy(ch, "p1")
    await old.send(CLUSTER)
    await old.ack(await old.recv())
    new = FakeEnvoy(ch, "p1")
    await new.send(CLUSTER)
    await new.ack(await new.recv())
    assert h.cache.status("p1")["streams"] == 2
    first, second = h.stream_ids
    assert first != second
    await old.call.done_writing()
    await old.status()
    await until(lambda: len(h.stream_ids) == 3)
    assert h.events[-1] == ("disconnect", "p1", True) and h.stream_ids[-1] == first
    assert h.cache.is_connected("p1")
    h.cache.set_snapshot("p1", snap(clusters=("a", "b")))
    assert new.names(await new.recv()) == ["a", "b"]


@pytest.mark.parametrize("env", [{"first_message_timeout": 0.3}], indirect=True)
async def test_a_stream_that_sends_nothing_is_closed_after_the_first_message_timeout(env, caplog):
    h, ch = env
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
    silent = [stub.StreamAggregatedResources(metadata=(("authorization", "good"),)) for _ in range(3)]
    started = time.monotonic()
    codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in silent)), 5)
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
    assert time.monotonic() - started < 2
    assert "no DiscoveryRequest within 0.3s" in await silent[0].details()
    assert h.events == []
    lines = [r for r in caplog.records if "no first request" in r.getMessage()]
    assert len(lines) == 1, "a flood is logged once per interval, not once per stream"


@pytest.mark.parametrize("env", [{"max_streams_per_connection": 2}], indirect=True)
async def test_streams_per_connection_are_capped(env):
    h, ch = env
    for n in ("p1", "p2", "p3"):
        h.cache.set_snapshot(n, snap())
    a = FakeEnvoy(ch, "p1")
    await a.send(CLUSTER)
    await a.recv()
    b = FakeEnvoy(ch, "p2")
    await b.send(CLUSTER)
    await b.recv()
    c = FakeEnvoy(ch, "p3")
    send_c = asyncio.create_task(c.send(CLUSTER))
    await asyncio.sleep(0.5)
    assert not h.cache.is_connected("p3"), "a third stream on the connection waits for a free slot"
    a.call.cancel()
    await c.recv()
    await send_c
    assert h.cache.is_connected("p3")


async def test_a_stream_opened_mid_pass_is_rechecked_within_one_interval() -> None:
    """A revoked token must not outlive one re-check interval, however its stream's opening fell against the
    re-checker's pass (a per-pass snapshot left a stream opened just after it unchecked for two intervals)."""

    revoked: set[str] = set()

    async def check(auth: str) -> None:
        if auth in revoked:
            raise PermissionError("token revoked")

    rechecker = _Rechecker(check, interval=1.0)
    rechecker.add("first")
    await asyncio.sleep(0.05)  # the re-checker's pass is under way
    late = rechecker.add("late")
    revoked.add("late")
    started = time.monotonic()
    with pytest.raises(StreamError, match="token revoked"):
        await asyncio.wait_for(late, 1.5)
    assert time.monotonic() - started < 1.0
    assert rechecker._task is not None
    rechecker._task.cancel()
