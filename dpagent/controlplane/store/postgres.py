"""PostgreSQL ResourceStore: the shared source of truth when several CP replicas serve one zone.

Every write transaction first locks the single revision counter row. That one lock gives the whole database one
total order of writes (revision order is commit order, across replicas), makes version checks and
create-if-absent exact without serialisable isolation, and rules out deadlocks between multi-row writes. CP
writes are rare next to reads, so the lost write parallelism does not matter; reads never take it.

Events are not published by the writer: the database trigger notifies every replica (see pgschema and
pglisten), and the writer returns once its own replica's listener has passed the commit. Imported only when
`store.type` is `postgres`, so neither the agent nor an SQLite CP loads asyncpg.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Any, TypeVar

import asyncpg

from dpagent.controlplane.store import pgschema
from dpagent.controlplane.store.auditrows import AUDIT_COLUMNS, audit_entry, audit_row, audit_where
from dpagent.controlplane.store.base import (
    DEFAULT_MAX_PENDING,
    AuditEntry,
    AuditQuery,
    Hub,
    Record,
    StoreClosed,
    StoreUnavailable,
    Subscription,
    check_key,
    check_page,
    checked_row,
    decode_doc,
    encode_doc,
    exists_error,
    stamped,
)
from dpagent.controlplane.store.pgconfig import PostgresConfig
from dpagent.controlplane.store.pglisten import ChangeListener

T = TypeVar("T")
#: What a dropped or refused connection raises; query errors (a bug, a constraint) pass through unchanged.
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                      asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError)
_COLUMNS = "kind, mesh, name, version, doc, created, modified"
_KEY = "kind = $1 AND mesh = $2 AND name = $3"
_AUDIT_INSERT = (f"INSERT INTO audit ({AUDIT_COLUMNS.partition(', ')[2]}) VALUES "
                 "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")


def _record(row: asyncpg.Record) -> Record:
    return Record(row[0], row[1], row[2], row[3], decode_doc(row[4]), row[5], row[6])


class PostgresStore:
    """ResourceStore on PostgreSQL. Create with `await PostgresStore.open(cfg)`; close with `await close()`."""

    def __init__(self, cfg: PostgresConfig, pool: asyncpg.Pool, listener: ChangeListener, hub: Hub,
                 clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self._pool = pool
        self.listener = listener
        self._hub = hub
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(cls, cfg: PostgresConfig, *, clock: Callable[[], float] = time.time) -> PostgresStore:
        """Connect, refuse an unmigrated or newer schema, and start listening for changes."""
        kwargs = pgschema.connect_kwargs(cfg)
        conn = await pgschema.connect(cfg)
        try:
            await pgschema.check_schema(conn, cfg)
        finally:
            await conn.close()
        try:
            pool = await asyncpg.create_pool(min_size=cfg.min_open_connections, max_size=cfg.max_open_connections,
                                             command_timeout=60, **kwargs)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise pgschema.connect_error(cfg, e) from None
        hub = Hub()
        listener = ChangeListener(lambda: pgschema.connect(cfg), pgschema.CHANNEL, hub)
        try:
            await listener.start()
        except BaseException:
            await pool.close()
            raise
        return cls(cfg, pool, listener, hub, clock)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the resource store {self.cfg.describe()} is closed")

    async def _write(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `body` in one transaction holding the counter lock; return after this replica published it."""
        self._check_open()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                start = await conn.fetchval("SELECT value FROM counters WHERE name = 'revision' FOR UPDATE")
                result = await body(conn)
                end = await conn.fetchval("SELECT value FROM counters WHERE name = 'revision'")
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"the PostgreSQL store {self.cfg.describe()} is unreachable ({e or type(e).__name__}"
                                   "); the write may or may not have been applied: read it back, then retry") from e
        if end > start:
            await self.listener.wait_for(end)
        return result

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self._check_open()
        try:
            return await self._pool.fetch(sql, *args)
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"the PostgreSQL store {self.cfg.describe()} is unreachable "
                                   f"({e or type(e).__name__}); retry when it is back") from e

    # ---- ResourceStore ---------------------------------------------------------------------------------------

    async def _log(self, conn: asyncpg.Connection, entry: AuditEntry | None, access: str, before: str | None,
                   after: str | None) -> None:
        """On the write's own connection, inside its transaction: the entry commits or rolls back with the change."""
        if entry is not None:
            await conn.execute(_AUDIT_INSERT, *audit_row(stamped(entry, access, before, after, self._clock())))

    async def create(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)

        async def body(conn: asyncpg.Connection) -> Record:
            now = self._clock()
            inserted = await conn.fetchval(
                "INSERT INTO resources (kind, mesh, name, version, doc, created, modified)"
                " VALUES ($1, $2, $3, 1, $4, $5, $5) ON CONFLICT DO NOTHING RETURNING version",
                kind, mesh, name, text, now)
            if inserted is None:
                raise exists_error(kind, mesh, name, await conn.fetchval(f"SELECT version FROM resources WHERE {_KEY}",
                                                                         kind, mesh, name))
            await self._log(conn, audit, "CREATE", None, text)
            return Record(kind, mesh, name, 1, decode_doc(text), now, now)

        return await self._write(body)

    async def update(
        self, kind: str, mesh: str, name: str, doc: dict[str, Any], *, version: int | None = None,
        audit: AuditEntry | None = None
    ) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)
        if version is not None:
            await self._precheck(kind, mesh, name, version)

        async def body(conn: asyncpg.Connection) -> Record:
            old = await conn.fetchrow(f"SELECT version, created, doc FROM resources WHERE {_KEY} FOR UPDATE",
                                      kind, mesh, name)
            old = checked_row(kind, mesh, name, old, itemgetter(0), version)
            await self._log(conn, audit, "UPDATE", old[2], text)
            return await self._replace(conn, kind, mesh, name, text, old[0], old[1])

        return await self._write(body)

    async def _precheck(self, kind: str, mesh: str, name: str, version: int) -> None:
        """Fail a stale compare-and-swap without queueing for the write lock: under contention most attempts are
        stale, and each would otherwise wait its turn just to be rejected. The check is repeated under the lock."""
        rows = await self._fetch(f"SELECT version FROM resources WHERE {_KEY}", kind, mesh, name)
        checked_row(kind, mesh, name, rows[0] if rows else None, itemgetter(0), version)

    async def upsert(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)

        async def body(conn: asyncpg.Connection) -> Record:
            old = await conn.fetchrow(f"SELECT version, created, doc FROM resources WHERE {_KEY} FOR UPDATE",
                                      kind, mesh, name)
            await self._log(conn, audit, "CREATE" if old is None else "UPDATE", None if old is None else old[2], text)
            if old is not None:
                return await self._replace(conn, kind, mesh, name, text, old[0], old[1])
            now = self._clock()
            await conn.execute("INSERT INTO resources (kind, mesh, name, version, doc, created, modified)"
                               " VALUES ($1, $2, $3, 1, $4, $5, $5)", kind, mesh, name, text, now)
            return Record(kind, mesh, name, 1, decode_doc(text), now, now)

        return await self._write(body)

    async def _replace(self, conn: asyncpg.Connection, kind: str, mesh: str, name: str, text: str, version: int,
                       created: float) -> Record:
        now = self._clock()
        await conn.execute(f"UPDATE resources SET version = $4, doc = $5, modified = $6 WHERE {_KEY}",
                           kind, mesh, name, version + 1, text, now)
        return Record(kind, mesh, name, version + 1, decode_doc(text), created, now)

    async def get(self, kind: str, mesh: str, name: str) -> Record | None:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM resources WHERE {_KEY}", kind, mesh, name)
        return _record(rows[0]) if rows else None

    async def list(
        self, kind: str, *, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[Record]:
        check_page(offset, limit)
        if mesh is None:
            sql = f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 ORDER BY mesh, name LIMIT $2 OFFSET $3"
            rows = await self._fetch(sql, kind, limit, offset)
        else:
            sql = (f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 AND mesh = $2 ORDER BY mesh, name"
                   " LIMIT $3 OFFSET $4")
            rows = await self._fetch(sql, kind, mesh, limit, offset)
        return [_record(r) for r in rows]

    async def count(self, kind: str, mesh: str | None = None) -> int:
        if mesh is None:
            rows = await self._fetch("SELECT count(*) FROM resources WHERE kind = $1", kind)
        else:
            rows = await self._fetch("SELECT count(*) FROM resources WHERE kind = $1 AND mesh = $2", kind, mesh)
        return int(rows[0][0])

    async def delete(self, kind: str, mesh: str, name: str, *, version: int | None = None,
                     audit: AuditEntry | None = None) -> Record:
        if version is not None:
            await self._precheck(kind, mesh, name, version)

        async def body(conn: asyncpg.Connection) -> Record:
            old = await conn.fetchrow(f"SELECT {_COLUMNS} FROM resources WHERE {_KEY} FOR UPDATE", kind, mesh, name)
            old = checked_row(kind, mesh, name, old, itemgetter(3), version)
            await self._log(conn, audit, "DELETE", old[4], None)
            await conn.execute(f"DELETE FROM resources WHERE {_KEY}", kind, mesh, name)
            return _record(old)

        return await self._write(body)

    async def delete_mesh_scoped(self, mesh: str) -> int:
        if not mesh:
            raise ValueError("delete_mesh_scoped needs a mesh name; global resources are never deleted in bulk")

        async def body(conn: asyncpg.Connection) -> int:
            keys = await conn.fetch("SELECT kind, name FROM resources WHERE mesh = $1 ORDER BY kind, name", mesh)
            # One statement per row, in key order, so the events come out in the same order as on SQLite.
            await conn.executemany("DELETE FROM resources WHERE kind = $1 AND mesh = $2 AND name = $3",
                                   [(k, mesh, n) for k, n in keys])
            return len(keys)

        return await self._write(body)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A read outside the resource table (who holds the leader lock), on the pool, with the store's errors."""
        return await self._fetch(sql, *args)

    async def revision(self) -> int:
        self._check_open()
        return self.listener.seen

    async def append_audit(self, entry: AuditEntry) -> None:
        """No revision lock: an entry that changes no resource needs no place in the order of writes."""
        self._check_open()
        row = audit_row(dataclasses.replace(entry, time=self._clock()))
        try:
            await self._pool.execute(_AUDIT_INSERT, *row)
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"the PostgreSQL store {self.cfg.describe()} is unreachable "
                                   f"({e or type(e).__name__}); retry when it is back") from e

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        where, args = audit_where(query, lambda n: f"${n}")
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit{where} ORDER BY id DESC LIMIT ${len(args) + 1}"
        return [audit_entry(r) for r in await self._fetch(sql, *args, query.limit)]

    async def sweep_audit(self, *, keep: int | None = None, older_than: float | None = None) -> int:
        self._check_open()
        gone = 0
        try:
            if older_than is not None:
                gone += int((await self._pool.execute("DELETE FROM audit WHERE at < $1", older_than)).split()[-1])
            if keep is not None:
                status = await self._pool.execute("DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id "
                                                  "DESC LIMIT 1 OFFSET $1)", keep)
                gone += int(status.split()[-1])
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"the PostgreSQL store {self.cfg.describe()} is unreachable "
                                   f"({e or type(e).__name__}); retry when it is back") from e
        return gone

    async def subscribe(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        self._check_open()
        return self._hub.subscribe(max_pending)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.listener.close()
        try:
            await asyncio.wait_for(self._pool.close(), 10)  # lets in-flight calls finish
        except TimeoutError:
            self._pool.terminate()
        self._hub.close_all()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
