"""Which CP replica runs the singleton jobs (deregistering departed dataplanes): one leader per store.

On PostgreSQL the leader is the replica holding a session advisory lock on its own connection. The database
releases the lock the moment that session ends, so a leader killed with `kill -9` is replaced within one retry
interval, without a lease expiry to wait out. A leader that cannot ping the database steps down at once: every
singleton job is a store write, so a leader cut off from the database could not do its work anyway, and stepping
down keeps `/metrics` honest. SQLite and the in-memory store serve one process, which is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dpagent.log import kv

log = logging.getLogger("dpagent.cp.leader")

#: The advisory lock key ("dpleader"), apart from the migration lock's; below 2**31 so pg_locks shows it as objid.
LEADER_LOCK = 0x64706C65
APP_PREFIX = "dpagent-cp "


def new_instance_id() -> str:
    """Host name plus a random suffix: several replicas on one host (tests, a rolling restart) stay distinct."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class LeaderView:
    """What `GET /status/control-plane` and `dpagent cp status` show."""

    instance_id: str
    leader: bool
    leader_instance: str | None  # None: no replica holds the lease right now (an election is under way)
    leader_since: float | None
    elections_won: int
    store: str
    store_available: bool  # PostgreSQL: this replica's change listener is connected; SQLite: always


class Leadership(Protocol):
    instance_id: str
    is_leader: bool
    leader_since: float | None
    elections_won: int

    async def run(self) -> None: ...

    async def leader_instance(self) -> str | None: ...


class SoleLeader:
    """SQLite and memory stores: one process per store, so this replica leads from the start."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.is_leader = True
        self.leader_since: float | None = time.time()
        self.elections_won = 1

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def leader_instance(self) -> str | None:
        return self.instance_id


Connect = Callable[[dict[str, str]], Awaitable[Any]]
Query = Callable[..., Awaitable[list[Any]]]


class PgLease:
    """Leader election on PostgreSQL with `pg_try_advisory_lock` held by one dedicated session.

    `connect(server_settings)` opens that session (asyncpg); `query(sql, *args)` runs a read on the store's pool,
    used to tell which replica leads. Run `run()` under the supervisor: it never returns, and on any failure it
    steps down before the supervisor restarts it.
    """

    def __init__(self, instance_id: str, connect: Connect, query: Query, *, interval: float = 1.0,
                 timeout: float = 3.0) -> None:
        self.instance_id = instance_id
        self._connect = connect
        self._query = query
        self.interval = interval
        self.timeout = timeout
        self.is_leader = False
        self.leader_since: float | None = None
        self.elections_won = 0
        self.on_change: Callable[[bool], None] | None = None

    async def run(self) -> None:
        try:
            while True:
                conn = None
                try:
                    # Keepalives: a partitioned leader's session is ended by the server within seconds, not hours,
                    # so the lock passes on even when no FIN ever arrives.
                    conn = await asyncio.wait_for(self._connect({
                        "application_name": APP_PREFIX + self.instance_id, "tcp_keepalives_idle": "5",
                        "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}), self.timeout)
                    await self._hold(conn)
                except Exception as e:  # socket, timeout and asyncpg's connection errors alike
                    self._step_down(f"{type(e).__name__}: {e}")
                finally:
                    if conn is not None:
                        conn.terminate()  # never wait on a dead socket; the server releases the lock with it
                await asyncio.sleep(self.interval)
        finally:
            self._step_down("stopping")

    async def _hold(self, conn: Any) -> None:
        """Try for the lock every interval; once held, ping every interval: a failed ping ends the session."""
        while True:
            if self.is_leader:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self.timeout)
            elif await asyncio.wait_for(conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK), self.timeout):
                self.is_leader = True
                self.leader_since = time.time()
                self.elections_won += 1
                kv(log, logging.INFO, "this replica is now the leader", instance=self.instance_id)
                if self.on_change:
                    self.on_change(True)
            await asyncio.sleep(self.interval)

    def _step_down(self, why: str) -> None:
        if not self.is_leader:
            return
        self.is_leader = False
        self.leader_since = None
        kv(log, logging.WARNING, "this replica stepped down as leader", instance=self.instance_id, reason=why)
        if self.on_change:
            self.on_change(False)

    async def leader_instance(self) -> str | None:
        if self.is_leader:
            return self.instance_id
        rows = await self._query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1 AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())", LEADER_LOCK)
        name = str(rows[0][0]) if rows else ""
        return name.removeprefix(APP_PREFIX) if name.startswith(APP_PREFIX) else None


async def view(lease: Leadership, store: str, store_available: bool) -> LeaderView:
    leader: str | None = None
    with contextlib.suppress(Exception):  # a store outage must not break the status page that reports it
        leader = await lease.leader_instance()
    return LeaderView(lease.instance_id, lease.is_leader, leader, lease.leader_since, lease.elections_won, store,
                      store_available)


def prometheus(lease: Leadership, store_available: bool) -> list[str]:
    return ["# TYPE dpagent_cp_leader gauge", f'dpagent_cp_leader{{instance="{lease.instance_id}"}} '
            f"{int(lease.is_leader)}", "# TYPE dpagent_cp_leader_elections_won_total counter",
            f"dpagent_cp_leader_elections_won_total {lease.elections_won}",
            "# TYPE dpagent_cp_store_available gauge", f"dpagent_cp_store_available {int(store_available)}"]
