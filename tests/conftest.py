"""Fixtures every test tree shares: one real PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pgserver import PgServer, start_or_skip


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Started on first use only, so runs that touch no PostgreSQL test pay nothing."""
    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
async def pg_database(pg_server: PgServer) -> AsyncIterator[str]:
    name = await pg_server.create_database()
    yield name
    await pg_server.drop_database(name)
