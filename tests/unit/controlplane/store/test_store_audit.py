"""The audit log every store keeps: an entry commits in the transaction of the change it records, on SQLite, a
real PostgreSQL and the in-memory store alike; filters and retention behave the same on all three."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dpagent.controlplane.store import AuditEntry, AuditQuery, MemoryStore, ResourceStore, SqliteStore
from dpagent.errors import Conflict, NotFound


def who(user: str = "john", **kw: Any) -> AuditEntry:
    base: dict[str, Any] = dict(who=user, groups=("team-a", "mesh-system:authenticated"), source="10.0.0.9",
                                access="", kind="MeshTimeout", mesh="default", name="t1", outcome="allowed")
    return AuditEntry(**{**base, **kw})


DOC = {"type": "MeshTimeout", "mesh": "default", "name": "t1", "spec": {}}


async def test_writes_record_access_digests_and_who(store: ResourceStore) -> None:
    await store.upsert("MeshTimeout", "default", "t1", DOC, audit=who())
    await store.upsert("MeshTimeout", "default", "t1", {**DOC, "spec": {"x": 1}}, audit=who())
    await store.delete("MeshTimeout", "default", "t1", audit=who("jane"))
    deleted, updated, created = await store.audit_entries(AuditQuery())
    assert (created.access, updated.access, deleted.access) == ("CREATE", "UPDATE", "DELETE")
    assert created.before == "" and created.after.startswith("sha256:")
    assert updated.before == created.after and updated.after != updated.before
    assert deleted.before == updated.after and deleted.after == ""
    assert created.groups == ("team-a", "mesh-system:authenticated") and created.source == "10.0.0.9"
    assert deleted.who == "jane" and created.time < updated.time < deleted.time
    assert created.id < updated.id < deleted.id


async def test_create_update_with_audit_and_secret_kinds_without_digests(store: ResourceStore) -> None:
    await store.create("Secret", "default", "s", {"data": "c2VjcmV0"}, audit=who(kind="Secret", digests=False))
    await store.update("Secret", "default", "s", {"data": "b3RoZXI="}, audit=who(kind="Secret", digests=False))
    entries = await store.audit_entries(AuditQuery(kind="Secret"))
    assert [(e.access, e.before, e.after) for e in entries] == [("UPDATE", "", ""), ("CREATE", "", "")]


async def test_a_write_that_fails_leaves_no_entry(store: ResourceStore) -> None:
    await store.create("MeshTimeout", "default", "t1", DOC)
    with pytest.raises(Conflict):
        await store.create("MeshTimeout", "default", "t1", DOC, audit=who())
    with pytest.raises(Conflict):
        await store.update("MeshTimeout", "default", "t1", DOC, version=7, audit=who())
    with pytest.raises(NotFound):
        await store.delete("MeshTimeout", "default", "nope", audit=who())
    assert await store.audit_entries(AuditQuery()) == []


async def test_an_entry_that_cannot_be_written_takes_the_change_with_it(store: Any, monkeypatch) -> None:
    """Change and entry share one transaction: when writing the entry fails, the change is rolled back too."""
    def boom(*_: Any) -> None:
        raise RuntimeError("audit insert failed")

    async def aboom(*_: Any) -> None:
        raise RuntimeError("audit insert failed")

    monkeypatch.setattr(store, "_log", aboom if type(store).__name__ == "PostgresStore" else boom)
    with pytest.raises(RuntimeError):
        await store.upsert("MeshTimeout", "default", "t1", DOC, audit=who())
    assert await store.get("MeshTimeout", "default", "t1") is None
    assert await store.revision() == 0


async def test_standalone_entries_filters_and_order(store: ResourceStore) -> None:
    for i in range(6):
        await store.append_audit(who("john" if i % 2 else "jane", access="GENERATE_USER_TOKEN", kind="",
                                     mesh="" if i < 3 else "default", name=f"n{i}", outcome="denied", detail="why"))
    johns = await store.audit_entries(AuditQuery(who="john"))
    assert [e.name for e in johns] == ["n5", "n3", "n1"]
    assert johns[0].outcome == "denied" and johns[0].detail == "why" and johns[0].access == "GENERATE_USER_TOKEN"
    assert [e.name for e in await store.audit_entries(AuditQuery(mesh="default", limit=2))] == ["n5", "n4"]
    t = [e.time for e in await store.audit_entries(AuditQuery())][::-1]
    window = await store.audit_entries(AuditQuery(since=t[1], until=t[3]))
    assert [e.name for e in window] == ["n2", "n1"]


async def test_retention_by_count_and_age_is_idempotent(store: ResourceStore) -> None:
    for i in range(10):
        await store.append_audit(who(f"u{i}", access="CREATE"))
    times = [e.time for e in await store.audit_entries(AuditQuery())][::-1]
    assert await store.sweep_audit(older_than=times[2]) == 2
    assert await store.sweep_audit(keep=5) == 3
    assert await store.sweep_audit(keep=5, older_than=times[2]) == 0
    assert [e.who for e in await store.audit_entries(AuditQuery())] == [f"u{i}" for i in range(9, 4, -1)]


async def test_ten_thousand_entries_filter_by_user_fast(store: ResourceStore) -> None:
    if isinstance(store, SqliteStore):
        await store._submit(lambda: store._write(lambda ev: store._conn.executemany(  # bulk fill: one transaction
            "INSERT INTO audit (at, who, groups_, source, access, kind, mesh, name, outcome, detail, before_digest,"
            " after_digest) VALUES (?, ?, '', '', 'CREATE', 'MeshTimeout', 'default', 'x', 'allowed', '', '', '')",
            [(float(i), f"user-{i % 100}") for i in range(10_000)])))
    elif isinstance(store, MemoryStore):
        for i in range(10_000):
            store._insert_audit(who(f"user-{i % 100}", time=float(i)))
    else:
        await store._pool.executemany(  # type: ignore[attr-defined]
            "INSERT INTO audit (at, who, groups_, source, access, kind, mesh, name, outcome, detail, before_digest,"
            " after_digest) VALUES ($1, $2, '', '', 'CREATE', 'MeshTimeout', 'default', 'x', 'allowed', '', '', '')",
            [(float(i), f"user-{i % 100}") for i in range(10_000)])
    await store.audit_entries(AuditQuery(who="user-7"))  # warm-up
    start = time.perf_counter()
    found = await store.audit_entries(AuditQuery(who="user-42", limit=1000))
    took = time.perf_counter() - start
    assert len(found) == 100 and {e.who for e in found} == {"user-42"}
    print(f"filter 10,000 entries by user: {took * 1000:.1f} ms ({type(store).__name__})")
    assert took < 0.1
