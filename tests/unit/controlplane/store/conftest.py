"""The `store` fixture every store suite here runs on: SQLite (with its production durability settings), a real
PostgreSQL and the in-memory store, each on a clock that ticks one second per reading."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pgserver import open_pg_store
from testlib import TickClock

from dpagent.controlplane.store import MemoryStore, ResourceStore, SqliteStore


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    if request.param == "sqlite":
        s: ResourceStore = await SqliteStore.open(tmp_path / "store.db", clock=TickClock())
    elif request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        database = await server.create_database()
        s = await open_pg_store(server, database, clock=TickClock())
    else:
        s = await MemoryStore.open(clock=TickClock())
    yield s
    await s.close()
    if request.param == "postgres":
        await server.drop_database(database)
