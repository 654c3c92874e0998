"""Leader election on a real PostgreSQL: one leader among replicas, a successor within a retry interval when the
leader's session dies, and a leader that loses its database connection steps down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pgserver import PgServer, open_pg_store

from dpagent.controlplane import leader as leader_mod
from dpagent.controlplane.store import pgschema
from dpagent.controlplane.store.postgres import PostgresStore

INTERVAL = 0.1


async def until(check: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


@pytest.fixture
async def store(pg_server: PgServer, pg_database: str) -> AsyncIterator[PostgresStore]:
    s = await open_pg_store(pg_server, pg_database)
    yield s
    await s.close()


def lease(store: PostgresStore, name: str) -> leader_mod.PgLease:
    async def connect(settings: dict[str, str]) -> asyncpg.Connection:
        return await asyncpg.connect(**{**pgschema.connect_kwargs(store.cfg), "server_settings": settings})

    return leader_mod.PgLease(name, connect, store.query, interval=INTERVAL, timeout=1.0)


@contextlib.asynccontextmanager
async def running(*leases: leader_mod.PgLease) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    tasks = {le.instance_id: asyncio.create_task(le.run()) for le in leases}
    try:
        yield tasks
    finally:
        for t in tasks.values():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_one_leader_and_a_successor_when_it_goes(store: PostgresStore) -> None:
    replicas = [lease(store, f"cp-{i}") for i in range(3)]
    async with running(*replicas) as tasks:
        await until(lambda: any(r.is_leader for r in replicas), 5, "a leader was elected")
        await asyncio.sleep(INTERVAL * 5)
        leaders = [r for r in replicas if r.is_leader]
        assert len(leaders) == 1, "exactly one leader"
        first = leaders[0]
        for r in replicas:
            assert await r.leader_instance() == first.instance_id, "every replica names the same leader"
        tasks[first.instance_id].cancel()  # the process goes: its session, and the lock with it
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[first.instance_id]
        assert not first.is_leader
        others = [r for r in replicas if r is not first]
        await until(lambda: sum(r.is_leader for r in others) == 1, 5, "a successor took over")


async def test_a_leader_whose_session_is_cut_steps_down(store: PostgresStore) -> None:
    changes: list[bool] = []
    solo = lease(store, "cp-solo")
    solo.on_change = changes.append
    async with running(solo):
        await until(lambda: solo.is_leader, 5, "elected")
        # What a lost database connection looks like to the leader: its session ends under it.
        await store.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                          leader_mod.APP_PREFIX + "cp-solo")
        await until(lambda: not solo.is_leader, 5, "stepped down when its session died")
        await until(lambda: solo.is_leader, 5, "elected again on a new session")
    assert changes[:3] == [True, False, True]
    assert solo.elections_won == 2
    text = "\n".join(leader_mod.prometheus(solo, True))
    assert 'dpagent_cp_leader{instance="cp-solo"} 0' in text, "stopped: no longer leader"
