"""SQLite-only properties: persistence, durable revisions, schema versioning, exclusivity, threading, speed."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from dpagent.controlplane.store import SqliteStore
from dpagent.controlplane.store.sqlite import MIGRATIONS
from dpagent.errors import ConfigError


def dp(i: int, mesh: str = "default") -> dict:
    return {
        "type": "Dataplane",
        "mesh": mesh,
        "name": f"web-{i:04d}",
        "networking": {
            "address": f"10.0.{i // 256}.{i % 256}",
            "inbound": [{"port": 8080, "servicePort": 80, "tags": {"kuma.io/service": "web", "version": "v1"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
            "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001},
        },
    }


async def test_everything_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cp" / "store.db"  # parent directories are created
    async with await SqliteStore.open(path) as store:
        await store.create("Mesh", "", "default", {"name": "default", "mtls": {"enabled": True}})
        for i in range(5):
            await store.create("Dataplane", "default", f"web-{i:04d}", dp(i))
        await store.update("Dataplane", "default", "web-0001", dp(101))
        await store.delete("Dataplane", "default", "web-0002")
        before = {(r.kind, r.mesh, r.name): r for k in ("Mesh", "Dataplane") for r in await store.list(k)}
        rev = await store.revision()
    assert rev == 8
    async with await SqliteStore.open(path) as store:
        after = {(r.kind, r.mesh, r.name): r for k in ("Mesh", "Dataplane") for r in await store.list(k)}
        assert after == before
        assert after[("Dataplane", "default", "web-0001")].version == 2
        assert await store.revision() == rev
        sub = await store.subscribe()
        await store.update("Dataplane", "default", "web-0001", dp(1), version=2)
        event = await asyncio.wait_for(anext(sub), 2)
        assert (event.revision, event.version) == (rev + 1, 3)


async def test_revision_is_monotonic_across_reopens_even_when_emptied(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    seen = []
    for round_ in range(3):
        async with await SqliteStore.open(path) as store:
            seen.append(await store.revision())
            await store.create("Dataplane", "default", "x", dp(round_))
            await store.delete("Dataplane", "default", "x")
            assert await store.count("Dataplane") == 0
    async with await SqliteStore.open(path) as store:
        seen.append(await store.revision())
    assert seen == [0, 2, 4, 6]


async def test_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStore.open(path) as store:
        await store.create("Secret", "default", "ca", {"key": "-----BEGIN PRIVATE KEY-----"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = tmp_path / "store.db-wal"
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    finally:
        conn.close()


async def test_synchronous_is_full_by_default(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "a.db") as store:
        assert await store._read(lambda: store._conn.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    async with await SqliteStore.open(tmp_path / "b.db", synchronous="NORMAL") as store:
        assert await store._read(lambda: store._conn.execute("PRAGMA synchronous").fetchone()[0]) == 1
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteStore.open(tmp_path / "c.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStore.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    n = len(MIGRATIONS)
    with pytest.raises(ConfigError, match=rf"schema version {n + 1}, newer than this dpagent supports \({n}\)"):
        await SqliteStore.open(path)


async def test_second_opener_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStore.open(path):
        started = time.monotonic()
        with pytest.raises(ConfigError, match="in use by another process"):
            await SqliteStore.open(path)
        assert time.monotonic() - started < 5
    async with await SqliteStore.open(path):  # released on close
        pass


async def test_all_sql_runs_on_one_worker_thread(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        threads: set[int] = set()
        store._conn.set_trace_callback(lambda _sql: threads.add(threading.get_ident()))
        await asyncio.gather(*(store.create("Dataplane", "default", f"d{i}", dp(i)) for i in range(20)))
        await store.list("Dataplane")
        await store.get("Dataplane", "default", "d1")
        await store.count("Dataplane")
        await store.delete_mesh_scoped("default")
        assert threads == {store._thread.ident}
        assert threading.get_ident() not in threads


async def test_a_cancelled_writer_still_commits_and_publishes(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        sub = await store.subscribe()
        task = asyncio.create_task(store.create("Dataplane", "default", "d", dp(1)))
        await asyncio.sleep(0)  # the job is queued on the worker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        event = await asyncio.wait_for(anext(sub), 2)
        assert (event.name, event.revision) == ("d", 1)
        assert (await store.get("Dataplane", "default", "d")).version == 1


async def test_failed_transaction_rolls_back_whole_batch(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await store.create("Dataplane", "default", "a", dp(1))

        def body(events: list) -> None:
            store._event(events, "Dataplane", "default", "zzz", "create", 1)
            store._conn.execute("DELETE FROM resources")
            raise RuntimeError("boom")

        sub = await store.subscribe()
        with pytest.raises(RuntimeError, match="boom"):
            await store._submit(lambda: store._write(body))
        assert await store.count("Dataplane") == 1 and await store.revision() == 1 and sub.pending() == 0
        assert (await store.create("Dataplane", "default", "b", dp(2))).version == 1
        assert (await asyncio.wait_for(anext(sub), 2)).revision == 2


async def test_list_of_1000_dataplanes_is_fast(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await asyncio.gather(*(store.create("Dataplane", "default", f"web-{i:04d}", dp(i)) for i in range(1000)))
        await asyncio.gather(*(store.create("Dataplane", "other", f"web-{i:04d}", dp(i, "other")) for i in range(200)))
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            records = await store.list("Dataplane", mesh="default")
            best = min(best, time.perf_counter() - started)
        assert len(records) == 1000 and records[0].name == "web-0000" and records[-1].name == "web-0999"
        print(f"list(Dataplane, mesh=default) x1000: {best * 1000:.1f} ms")
        assert best < 0.25  # ~5 ms on a 2-core VM; generous for loaded CI machines
