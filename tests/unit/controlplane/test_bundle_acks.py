"""The CA-rotation gate counts every replica's proxies: a root is issued from only when each live replica says
all its proxies ACKed a bundle holding it; a replica that died stops counting, and the leader clears its record."""

from __future__ import annotations

from dpagent.controlplane.bundle_acks import KIND, BundleAcks
from dpagent.controlplane.store import MemoryStore


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(store: MemoryStore, name: str, clock: Clock, acked: dict[str, set[str]], leader: bool = False,
            bundle: tuple[str, ...] = ("ca-1", "ca-2")) -> BundleAcks:
    return BundleAcks(store, name, local=lambda mesh, backend: backend in acked.get(mesh, set()),
                      meshes=lambda: [("default", bundle)], is_leader=lambda: leader, clock=clock)


async def test_a_new_root_waits_for_the_proxies_of_every_replica() -> None:
    store, clock = MemoryStore(), Clock()
    a_acked, b_acked = {"default": {"ca-1", "ca-2"}}, {"default": {"ca-1"}}
    a, b = replica(store, "a", clock, a_acked), replica(store, "b", clock, b_acked)
    await a.publish()
    await b.publish()
    assert await a.can_issue("default", "ca-1")
    assert not await a.can_issue("default", "ca-2"), "replica b's proxies have not ACKed the new root yet"
    b_acked["default"].add("ca-2")
    await b.publish()  # changed: written at once, not at the next heartbeat
    assert await a.can_issue("default", "ca-2") and await b.can_issue("default", "ca-2")
    a_acked["default"].discard("ca-2")
    assert not await a.can_issue("default", "ca-2"), "a replica's own proxies always count"


async def test_a_dead_replica_stops_blocking_and_the_leader_clears_it() -> None:
    store, clock = MemoryStore(), Clock()
    dead = replica(store, "dead", clock, {"default": {"ca-1"}})
    await dead.publish()
    alive = replica(store, "alive", clock, {"default": {"ca-1", "ca-2"}}, leader=True)
    await alive.publish()
    assert not await alive.can_issue("default", "ca-2")
    clock.now += 21  # "dead" stopped refreshing its record
    await alive.publish()
    assert await alive.can_issue("default", "ca-2")
    assert await alive.sweep_dead() == 0, "kept a while, in case it was only slow"
    clock.now += 60
    await alive.publish()
    assert await alive.sweep_dead() == 1
    assert [r.name for r in await store.list(KIND)] == ["alive"]


async def test_a_clean_stop_withdraws_the_record() -> None:
    store, clock = MemoryStore(), Clock()
    a = replica(store, "a", clock, {"default": {"ca-1"}})
    await a.publish()
    await a.close()
    assert await store.list(KIND) == []
