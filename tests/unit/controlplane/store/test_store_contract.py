"""Behaviour every ResourceStore must have; runs against SQLite, a real PostgreSQL and the in-memory fake alike."""

from __future__ import annotations

import asyncio
import math

import pytest

from dpagent.controlplane.store import (
    ChangeEvent,
    ResourceStore,
    StoreClosed,
    Subscription,
    SubscriptionOverflow,
)
from dpagent.errors import Conflict, NotFound


def dp(name: str, mesh: str = "default", port: int = 8080) -> dict:
    return {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {"address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": name}}]},
    }


async def next_event(sub: Subscription, timeout: float = 2.0) -> ChangeEvent:
    return await asyncio.wait_for(anext(sub), timeout)


def drain(sub: Subscription) -> list[ChangeEvent]:
    out = []
    while sub.pending():
        out.append(sub._queue.popleft())
    return out


async def test_implements_protocol(store: ResourceStore) -> None:
    assert isinstance(store, ResourceStore)


async def test_create_then_get(store: ResourceStore) -> None:
    rec = await store.create("Dataplane", "default", "web-1", dp("web-1"))
    assert (rec.kind, rec.mesh, rec.name, rec.version) == ("Dataplane", "default", "web-1", 1)
    assert rec.doc == dp("web-1")
    assert rec.created == rec.modified
    assert await store.get("Dataplane", "default", "web-1") == rec
    assert await store.get("Dataplane", "other", "web-1") is None
    assert await store.get("Mesh", "", "web-1") is None


async def test_create_existing_conflicts_naming_the_resource(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    with pytest.raises(Conflict) as err:
        await store.create("Dataplane", "default", "web-1", dp("web-1", port=1))
    msg = str(err.value)
    assert 'Dataplane "web-1"' in msg and 'mesh "default"' in msg and "already exists" in msg
    assert (await store.get("Dataplane", "default", "web-1")).doc == dp("web-1")


async def test_global_kind_message_has_no_mesh(store: ResourceStore) -> None:
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    with pytest.raises(Conflict, match=r'^Mesh "default" already exists') as err:
        await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    assert "mesh" not in str(err.value).replace('Mesh "default"', "")
    # The same name in another scope or kind is a different resource.
    await store.create("Dataplane", "default", "default", dp("default"))
    await store.create("GlobalSecret", "", "default", {"data": "x"})


async def test_update_bumps_version_and_keeps_created(store: ResourceStore) -> None:
    first = await store.create("Dataplane", "default", "web-1", dp("web-1"))
    second = await store.update("Dataplane", "default", "web-1", dp("web-1", port=9090))
    assert second.version == 2 and second.created == first.created and second.modified > first.modified
    third = await store.update("Dataplane", "default", "web-1", dp("web-1", port=9091), version=2)
    assert third.version == 3
    assert await store.get("Dataplane", "default", "web-1") == third


async def test_update_missing_is_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFound, match=r'Dataplane "web-1" in mesh "default" not found'):
        await store.update("Dataplane", "default", "web-1", dp("web-1"))
    assert await store.revision() == 0


async def test_optimistic_concurrency_names_both_versions(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    await store.update("Dataplane", "default", "web-1", dp("web-1", port=2))
    with pytest.raises(Conflict) as err:
        await store.update("Dataplane", "default", "web-1", dp("web-1", port=3), version=1)
    msg = str(err.value)
    assert "expected version 1" in msg and "current version is 2" in msg and 'Dataplane "web-1"' in msg
    rec = await store.get("Dataplane", "default", "web-1")
    assert rec.version == 2 and rec.doc == dp("web-1", port=2)


async def test_delete(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    await store.update("Dataplane", "default", "web-1", dp("web-1", port=2))
    with pytest.raises(Conflict, match=r"expected version 1.*current version is 2"):
        await store.delete("Dataplane", "default", "web-1", version=1)
    gone = await store.delete("Dataplane", "default", "web-1", version=2)
    assert gone.version == 2 and gone.doc == dp("web-1", port=2)
    assert await store.get("Dataplane", "default", "web-1") is None
    with pytest.raises(NotFound, match='Dataplane "web-1" in mesh "default" not found'):
        await store.delete("Dataplane", "default", "web-1")
    # Re-creating after a delete starts a fresh history.
    assert (await store.create("Dataplane", "default", "web-1", dp("web-1"))).version == 1


async def test_upsert(store: ResourceStore) -> None:
    a = await store.upsert("MeshTrafficPermission", "default", "allow-all", {"spec": {"a": 1}})
    b = await store.upsert("MeshTrafficPermission", "default", "allow-all", {"spec": {"a": 2}})
    assert (a.version, b.version) == (1, 2) and b.created == a.created and b.doc == {"spec": {"a": 2}}


async def test_list_orders_by_mesh_then_name_and_filters(store: ResourceStore) -> None:
    for mesh, name in [("zeta", "a"), ("default", "web-2"), ("default", "web-10"), ("alpha", "z"), ("default", "db")]:
        await store.create("Dataplane", mesh, name, dp(name, mesh))
    await store.create("MeshTrafficPermission", "default", "mtp", {"spec": {}})
    all_dps = await store.list("Dataplane")
    assert [(r.mesh, r.name) for r in all_dps] == [
        ("alpha", "z"),
        ("default", "db"),
        ("default", "web-10"),
        ("default", "web-2"),
        ("zeta", "a"),
    ]
    assert [r.name for r in await store.list("Dataplane", mesh="default")] == ["db", "web-10", "web-2"]
    assert await store.list("Dataplane", mesh="nope") == []
    assert [r.name for r in await store.list("MeshTrafficPermission")] == ["mtp"]
    assert await store.count("Dataplane") == 5
    assert await store.count("Dataplane", "default") == 3
    assert await store.count("Mesh") == 0


async def test_pagination(store: ResourceStore) -> None:
    names = [f"dp-{i:03d}" for i in range(25)]
    for name in reversed(names):
        await store.create("Dataplane", "default", name, dp(name))
    pages = []
    offset = 0
    while page := await store.list("Dataplane", mesh="default", offset=offset, limit=10):
        pages.append([r.name for r in page])
        offset += len(page)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [n for p in pages for n in p] == names
    assert await store.list("Dataplane", offset=24) == [await store.get("Dataplane", "default", "dp-024")]
    assert await store.list("Dataplane", offset=100) == []
    assert await store.list("Dataplane", limit=0) == []
    assert [r.name for r in await store.list("Dataplane", offset=20)] == names[20:]
    with pytest.raises(ValueError):
        await store.list("Dataplane", offset=-1)
    with pytest.raises(ValueError):
        await store.list("Dataplane", limit=-1)


async def test_documents_are_private_copies(store: ResourceStore) -> None:
    doc = dp("web-1")
    rec = await store.create("Dataplane", "default", "web-1", doc)
    doc["networking"]["address"] = "changed"
    rec.doc["networking"]["address"] = "changed too"
    got = await store.get("Dataplane", "default", "web-1")
    assert got.doc == dp("web-1")
    got.doc["name"] = "x"
    assert (await store.list("Dataplane"))[0].doc == dp("web-1")


@pytest.mark.parametrize(
    ("doc", "exc"),
    [
        ({"x": math.nan}, ValueError),
        ({"x": object()}, TypeError),
        (["not", "a", "dict"], TypeError),
        ({"x": "\ud800"}, ValueError),
    ],
)
async def test_unstorable_documents_fail_without_side_effects(store: ResourceStore, doc: object, exc: type) -> None:
    sub = await store.subscribe()
    with pytest.raises(exc):
        await store.create("Dataplane", "default", "web-1", doc)  # type: ignore[arg-type]
    assert await store.get("Dataplane", "default", "web-1") is None
    assert await store.revision() == 0 and sub.pending() == 0


async def test_unicode_and_nesting_round_trip(store: ResourceStore) -> None:
    doc = {"name": "café-😀", "n": [1, 2.5, None, True, {"deep": {"deeper": ["x"]}}], "big": 2**62}
    await store.create("Secret", "default", "s", doc)
    assert (await store.get("Secret", "default", "s")).doc == doc


async def test_empty_key_parts_are_rejected(store: ResourceStore) -> None:
    with pytest.raises(ValueError):
        await store.create("", "default", "a", {})
    with pytest.raises(ValueError):
        await store.create("Dataplane", "default", "", {})


async def test_delete_mesh_scoped(store: ResourceStore) -> None:
    await store.create("Mesh", "", "default", {"name": "default"})
    await store.create("GlobalSecret", "", "g", {})
    for name in ("b", "a"):
        await store.create("Dataplane", "default", name, dp(name))
        await store.create("Dataplane", "other", name, dp(name, "other"))
    await store.create("MeshTrafficPermission", "default", "mtp", {})
    await store.create("Secret", "default", "ca", {"key": "k"})
    sub = await store.subscribe()
    assert await store.delete_mesh_scoped("default") == 4
    events = [await next_event(sub) for _ in range(4)]
    assert [(e.kind, e.name, e.op) for e in events] == [
        ("Dataplane", "a", "delete"),
        ("Dataplane", "b", "delete"),
        ("MeshTrafficPermission", "mtp", "delete"),
        ("Secret", "ca", "delete"),
    ]
    assert [e.revision for e in events] == list(range(events[0].revision, events[0].revision + 4))
    assert await store.count("Dataplane") == 2 and await store.count("Mesh") == 1
    assert await store.count("GlobalSecret") == 1
    assert await store.delete_mesh_scoped("default") == 0
    with pytest.raises(ValueError):
        await store.delete_mesh_scoped("")


async def test_events_in_commit_order_with_contiguous_revisions(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "before", dp("before"))
    sub = await store.subscribe()
    start = await store.revision()
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    await store.update("Dataplane", "default", "web-1", dp("web-1", port=2))
    await store.upsert("Mesh", "", "default", {})
    await store.delete("Dataplane", "default", "web-1")
    events = [await next_event(sub) for _ in range(4)]
    assert [(e.kind, e.mesh, e.name, e.op, e.version) for e in events] == [
        ("Dataplane", "default", "web-1", "create", 1),
        ("Dataplane", "default", "web-1", "update", 2),
        ("Mesh", "", "default", "create", 1),
        ("Dataplane", "default", "web-1", "delete", 2),
    ]
    assert [e.revision for e in events] == [start + 1, start + 2, start + 3, start + 4]
    assert await store.revision() == start + 4
    assert sub.pending() == 0


async def test_concurrent_writers_get_one_total_order(store: ResourceStore) -> None:
    sub = await store.subscribe()
    other = await store.subscribe()
    names = [f"dp-{i}" for i in range(40)]
    await asyncio.gather(*(store.create("Dataplane", "default", n, dp(n)) for n in names))
    events = drain(sub)
    assert [e.revision for e in events] == list(range(1, 41))
    assert sorted(e.name for e in events) == sorted(names)
    assert drain(other) == events  # every subscriber sees the same order


async def test_no_events_for_failed_writes(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    sub = await store.subscribe()
    rev = await store.revision()
    with pytest.raises(Conflict):
        await store.create("Dataplane", "default", "web-1", dp("web-1"))
    with pytest.raises(Conflict):
        await store.update("Dataplane", "default", "web-1", dp("web-1"), version=7)
    with pytest.raises(Conflict):
        await store.delete("Dataplane", "default", "web-1", version=7)
    with pytest.raises(NotFound):
        await store.update("Dataplane", "default", "missing", dp("missing"))
    with pytest.raises(NotFound):
        await store.delete("Dataplane", "default", "missing")
    assert await store.revision() == rev and sub.pending() == 0
    await store.delete("Dataplane", "default", "web-1")
    event = await next_event(sub)
    assert (event.op, event.revision) == ("delete", rev + 1)


async def test_subscriber_sees_only_later_commits(store: ResourceStore) -> None:
    await store.create("Dataplane", "default", "old", dp("old"))
    sub = await store.subscribe()
    await store.create("Dataplane", "default", "new", dp("new"))
    assert (await next_event(sub)).name == "new"
    assert sub.pending() == 0


async def test_waiting_subscriber_is_woken(store: ResourceStore) -> None:
    sub = await store.subscribe()
    waiter = asyncio.create_task(next_event(sub))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await store.create("Dataplane", "default", "web-1", dp("web-1"))
    assert (await waiter).name == "web-1"


async def test_slow_subscriber_does_not_block_writers_and_overflows(store: ResourceStore) -> None:
    sub = await store.subscribe(max_pending=5)
    healthy = await store.subscribe()
    for i in range(8):  # a subscriber that never reads must not stall these awaits
        await store.create("Dataplane", "default", f"dp-{i}", dp(f"dp-{i}"))
    assert sub.overflowed and healthy.pending() == 8 and not healthy.overflowed
    with pytest.raises(SubscriptionOverflow, match="resync"):
        await next_event(sub)
    with pytest.raises(SubscriptionOverflow):  # stays failed until the consumer acknowledges
        await next_event(sub)
    sub.resync()
    assert not sub.overflowed and sub.pending() == 0
    await store.delete("Dataplane", "default", "dp-0")
    event = await next_event(sub)
    assert (event.name, event.op, event.revision) == ("dp-0", "delete", 9)


async def test_closing_a_subscription_ends_iteration(store: ResourceStore) -> None:
    sub = await store.subscribe()
    seen: list[str] = []

    async def consume() -> None:
        async for event in sub:
            seen.append(event.name)

    task = asyncio.create_task(consume())
    await store.create("Dataplane", "default", "a", dp("a"))
    await asyncio.sleep(0.01)
    sub.close()
    await asyncio.wait_for(task, 2)
    await store.create("Dataplane", "default", "b", dp("b"))
    assert seen == ["a"] and sub.closed


async def test_close_ends_subscriptions_and_refuses_calls(store: ResourceStore) -> None:
    sub = await store.subscribe()
    task = asyncio.create_task(next_event(sub))
    await asyncio.sleep(0.01)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await task
    with pytest.raises(StoreClosed):
        await store.get("Dataplane", "default", "a")
    with pytest.raises(StoreClosed):
        await store.create("Dataplane", "default", "a", {})
    with pytest.raises(StoreClosed):
        await store.subscribe()
    await store.close()  # idempotent
