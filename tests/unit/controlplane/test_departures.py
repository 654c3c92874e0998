"""Drain and deregistration state lives in the store, so two replicas agree on it: a proxy draining through
replica A is withdrawn by replica B, and only the leader deregisters a proxy that left, once, after the delay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from dpagent.controlplane.departures import DEPARTURE, Departures
from dpagent.controlplane.store import MemoryStore

DELAY = 10.0


class Sink:
    def __init__(self) -> None:
        self.leaving: set[tuple[str, str]] = set()

    def set_leaving(self, mesh: str, name: str, leaving: bool) -> None:
        (self.leaving.add if leaving else self.leaving.discard)((mesh, name))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    def __init__(self, store: MemoryStore, clock: Clock, leader: bool) -> None:
        self.sink = Sink()
        self.leader = leader
        self.streams: set[tuple[str, str]] = set()  # proxies with a live stream here
        self.dep = Departures(store, self.sink, delay=DELAY, is_leader=lambda: self.leader, clock=clock,
                              is_local=lambda mesh, name: (mesh, name) in self.streams)


@pytest.fixture
async def zone() -> AsyncIterator[tuple[MemoryStore, Clock, Replica, Replica]]:
    store, clock = MemoryStore(), Clock()
    a, b = Replica(store, clock, leader=False), Replica(store, clock, leader=True)
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    await store.create("Dataplane", "default", "web-1", {"type": "Dataplane", "mesh": "default", "name": "web-1"})
    tasks = [asyncio.create_task(r.dep.follow()) for r in (a, b)]
    await settle()
    yield store, clock, a, b
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_drain_through_one_replica_withdraws_the_proxy_on_the_other(zone) -> None:
    store, _, a, b = zone
    await a.dep.drain("default", "web-1")
    await settle()
    assert b.sink.leaving == {("default", "web-1")} == a.sink.leaving
    await b.dep.bootstrapped("default", "web-1")  # the agent started again
    await settle()
    assert not a.sink.leaving and not b.sink.leaving
    assert await store.get(DEPARTURE, "default", "web-1") is None


async def test_only_the_leader_deregisters_and_only_after_the_delay(zone) -> None:
    store, clock, a, b = zone
    await a.dep.drain("default", "web-1")
    clock.now += 3
    await a.dep.disconnected("default", "web-1", direct=True, graceful=False)  # draining: a goodbye is not needed
    await settle()
    clock.now += DELAY - 3 - 0.5
    assert await b.dep.sweep() == 0, "the delay counts from the drain's start and is not over yet"
    clock.now += 1
    assert await a.dep.sweep() == 0, "a replica that does not lead never deregisters"
    assert await b.dep.sweep() == 1
    assert await store.get("Dataplane", "default", "web-1") is None
    await settle()
    assert not a.dep.known and not b.sink.leaving


async def test_a_proxy_back_on_another_replica_keeps_its_dataplane(zone) -> None:
    store, clock, a, b = zone
    await a.dep.disconnected("default", "web-1", direct=True, graceful=True)
    await settle()
    await b.dep.connected("default", "web-1")  # Envoy reconnected to replica B
    await settle()
    clock.now += DELAY * 3
    assert await b.dep.sweep() == 0
    assert await store.get("Dataplane", "default", "web-1") is not None


async def test_a_crash_or_an_applied_dataplane_is_never_deregistered(zone) -> None:
    store, clock, a, b = zone
    await a.dep.disconnected("default", "web-1", direct=True, graceful=False)
    await a.dep.disconnected("default", "web-1", direct=False, graceful=True)
    await settle()
    clock.now += DELAY * 3
    assert await b.dep.sweep() == 0 and await store.get(DEPARTURE, "default", "web-1") is None


async def test_a_reconnect_that_wins_the_race_with_the_sweep_keeps_the_proxy(zone, monkeypatch) -> None:
    store, clock, a, b = zone
    await a.dep.disconnected("default", "web-1", direct=True, graceful=True)
    await settle()
    clock.now += DELAY + 1
    real_update = store.update

    async def reconnect_first(kind: str, mesh: str, name: str, doc: dict[str, object], **kw: object) -> object:
        if kind == DEPARTURE and doc.get("deregistering"):
            await a.dep.connected(mesh, name)  # Envoy reconnects to replica A between the leader's read and its claim
        return await real_update(kind, mesh, name, doc, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "update", reconnect_first)
    assert await b.dep.sweep() == 0
    assert await store.get("Dataplane", "default", "web-1") is not None


async def test_the_dataplane_is_gone_before_its_proxy_stops_draining(zone) -> None:
    """Deleting the record ends the drain on every replica; were the Dataplane still there, a replica rebuilding
    its config at that moment would hand the departed proxy's endpoints out again."""
    store, clock, a, b = zone
    await a.dep.drain("default", "web-1")
    await a.dep.disconnected("default", "web-1", direct=True, graceful=True)
    await settle()
    clock.now += DELAY + 1
    seen: list[tuple[str, bool]] = []
    real_delete = store.delete

    async def note(kind: str, mesh: str, name: str, **kw: object) -> object:
        seen.append((kind, await store.get("Dataplane", mesh, name) is not None))
        return await real_delete(kind, mesh, name, **kw)  # type: ignore[arg-type]

    store.delete = note  # type: ignore[method-assign]
    assert await b.dep.sweep() == 1
    assert seen[-1] == (DEPARTURE, False), seen


async def test_a_departure_recorded_during_a_full_reread_is_kept(zone) -> None:
    """A listing whose snapshot predates a departure must not drop the departure read one by one meanwhile."""
    store, _, _, b = zone
    real_list = store.list
    stale = await real_list(DEPARTURE)  # taken before the proxy left

    async def slow_list(kind: str, *args: object, **kw: object) -> object:
        if kind != DEPARTURE:
            return await real_list(kind, *args, **kw)  # type: ignore[arg-type]
        await b.dep.drain("default", "web-1")  # recorded and read back while the listing is in flight
        return stale

    store.list = slow_list  # type: ignore[method-assign]
    await b.dep._read_all()
    assert b.dep.draining("default", "web-1") and ("default", "web-1") in b.sink.leaving


async def test_an_older_streams_goodbye_on_one_replica_keeps_a_proxy_live_on_another(zone) -> None:
    store, clock, a, b = zone
    b.streams.add(("default", "web-1"))  # the proxy reconnected to b before a saw its old stream end
    await a.dep.disconnected("default", "web-1", direct=True, graceful=True)
    await settle()
    clock.now += DELAY * 3
    assert await b.dep.sweep() == 0
    assert await store.get("Dataplane", "default", "web-1") is not None


async def test_a_departure_is_deregistered_without_its_change_event() -> None:
    """The replica that saw the proxy go reads its own record back, and the leader re-reads every record now and
    then, so a change event that never arrives cannot leave a departed proxy registered for good."""
    store, clock = MemoryStore(), Clock()
    await store.create("Dataplane", "default", "web-1", {"type": "Dataplane", "mesh": "default", "name": "web-1"})
    here = Replica(store, clock, leader=True)  # no follow(): no event ever reaches it
    await here.dep.drain("default", "web-1")
    await here.dep.disconnected("default", "web-1", direct=True, graceful=True)
    clock.now += DELAY + 1
    assert await here.dep.sweep() == 1
    assert await store.get("Dataplane", "default", "web-1") is None

    await store.create("Dataplane", "default", "web-2", {"type": "Dataplane", "mesh": "default", "name": "web-2"})
    other = Replica(store, clock, leader=False)  # the replica that saw it go
    await other.dep.disconnected("default", "web-2", direct=True, graceful=True)
    clock.now += DELAY + 1
    assert await here.dep.sweep() == 0  # the leader never heard of it ...
    task = asyncio.create_task(here.dep.sweep_forever(interval=0.001, reread_every=3))
    for _ in range(200):
        await asyncio.sleep(0.002)
        if await store.get("Dataplane", "default", "web-2") is None:
            break
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await store.get("Dataplane", "default", "web-2") is None  # ... until its periodic re-read
