"""Embedded SQLite ResourceStore: the CP's default, durable source of truth.

Durability. WAL journal with `synchronous=FULL` by default: every commit fsyncs the WAL before the call returns, so
an acknowledged write survives `kill -9` *and* power loss / kernel panic. `NORMAL` would already survive kill -9
(the WAL bytes are in the OS page cache once `write()` returns) and skips one fsync per commit, but can lose the
last commits on power loss; for a store that holds CA keys, token signing keys and revocation lists, a lost
revocation or a CA that forgets certificates it signed is worse than a few milliseconds per write, and CP writes
are rare compared with reads. `synchronous="NORMAL"` stays available for tests and benchmarks.

Threading. One dedicated thread owns the connection and runs every statement, in submission order: sqlite3
connections must not be shared across threads, and a single writer serialises transactions without lock
contention. The event loop only hands work over and awaits; it never touches the disk. Completion is handed back
with `call_soon_threadsafe` from that thread right after each commit, so events are published in commit order,
only for commits that succeeded, and before the writer's await returns.

Exclusivity. `locking_mode=EXCLUSIVE` keeps the file locked while the store is open: a second CP pointed at the
same file fails fast at open instead of both serving diverging change streams (and WAL needs no shared memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, TypeVar

from dpagent.controlplane.store.auditrows import AUDIT_COLUMNS, audit_entry, audit_row, audit_where
from dpagent.controlplane.store.base import (
    DEFAULT_MAX_PENDING,
    AuditEntry,
    AuditQuery,
    ChangeEvent,
    Hub,
    Op,
    Record,
    StoreClosed,
    Subscription,
    check_key,
    check_page,
    checked_row,
    decode_doc,
    encode_doc,
    exists_error,
    stamped,
)
from dpagent.errors import ConfigError

T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]
Job = Callable[[], tuple[Any, list[ChangeEvent]]]

# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE resources (
        kind     TEXT    NOT NULL,
        mesh     TEXT    NOT NULL,
        name     TEXT    NOT NULL,
        version  INTEGER NOT NULL,
        doc      TEXT    NOT NULL,
        created  REAL    NOT NULL,
        modified REAL    NOT NULL,
        revision INTEGER NOT NULL,
        PRIMARY KEY (kind, mesh, name)
    ) WITHOUT ROWID;
    CREATE INDEX resources_by_mesh ON resources (mesh, kind, name);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES ('revision', 0);
    """,
    # The audit log: written in the same transaction as the change it records; by-who and by-time indexes keep
    # `GET /audit?user=` and the retention sweep cheap at tens of thousands of rows.
    """
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      REAL NOT NULL,
        who     TEXT NOT NULL,
        groups_ TEXT NOT NULL,
        source  TEXT NOT NULL,
        access  TEXT NOT NULL,
        kind    TEXT NOT NULL,
        mesh    TEXT NOT NULL,
        name    TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail  TEXT NOT NULL,
        before_digest TEXT NOT NULL,
        after_digest  TEXT NOT NULL
    );
    CREATE INDEX audit_by_who ON audit (who, id);
    CREATE INDEX audit_by_at ON audit (at);
    """,
]


_COLUMNS = "kind, mesh, name, version, doc, created, modified"
_STOP = object()


def _record(row: tuple[str, str, str, int, str, float, float]) -> Record:
    return Record(row[0], row[1], row[2], row[3], decode_doc(row[4]), row[5], row[6])


class SqliteStore:
    """ResourceStore on one SQLite file. Create with `await SqliteStore.open(path)`; close with `await close()`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, revision: int, clock: Callable[[], float]) -> None:
        self.path = path
        self._conn = conn
        self._db_revision = revision  # owned by the worker thread
        self._revision = revision  # what the loop has published
        self._clock = clock
        self._hub = Hub()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-store:{path.name}", daemon=True)
        self._thread.start()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        """Open (creating and migrating if needed). The file is 0600: it holds private keys."""
        p = Path(path)
        conn, revision = await asyncio.to_thread(_connect, p, synchronous)
        # The connection was made on a helper thread; from here on only the store's own worker thread uses it.
        return cls(p, conn, revision, clock)

    # ---- worker plumbing -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            fn, fut = item  # type: ignore[misc]
            try:
                result, events = fn()
            except BaseException as exc:  # handed to the awaiting coroutine, never swallowed
                self._post(self._fail, fut, exc)
                continue
            self._post(self._settle, fut, result, events)

    def _post(self, cb: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is left to tell
            self._loop.call_soon_threadsafe(cb, *args)

    def _settle(self, fut: asyncio.Future[Any], result: Any, events: list[ChangeEvent]) -> None:
        # Publish even if the caller was cancelled: the commit happened and subscribers must hear about it.
        if events:
            self._revision = events[-1].revision
            self._hub.publish(events)
        if not fut.done():
            fut.set_result(result)

    @staticmethod
    def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
        if not fut.done():
            fut.set_exception(exc)

    async def _submit(self, fn: Job) -> Any:
        if self._closed:
            raise StoreClosed(f"the resource store {self.path} is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((fn, fut))
        return await fut

    async def _read(self, fn: Callable[[], T]) -> T:
        return await self._submit(lambda: (fn(), []))

    def _write(self, body: Callable[[list[ChangeEvent]], T]) -> tuple[T, list[ChangeEvent]]:
        """Run `body` in one IMMEDIATE transaction (worker thread); events it appends carry fresh revisions."""
        events: list[ChangeEvent] = []
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(events)
            if events:
                conn.execute("UPDATE counters SET value = ? WHERE name = 'revision'", (events[-1].revision,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if events:
            self._db_revision = events[-1].revision
        return result, events

    def _event(self, events: list[ChangeEvent], kind: str, mesh: str, name: str, op: Op, version: int) -> int:
        rev = (events[-1].revision if events else self._db_revision) + 1
        events.append(ChangeEvent(kind, mesh, name, op, version, rev))
        return rev

    def _current(self, kind: str, mesh: str, name: str) -> tuple[str, str, str, int, str, float, float] | None:
        return self._conn.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND mesh = ? AND name = ?", (kind, mesh, name)
        ).fetchone()

    # ---- ResourceStore ---------------------------------------------------------------------------------------

    def _log(self, entry: AuditEntry | None, access: str, before: str | None, after: str | None) -> None:
        """Inside the caller's transaction (worker thread): the entry commits or rolls back with the change."""
        if entry is not None:
            self._insert_audit(stamped(entry, access, before, after, self._clock()))

    def _insert_audit(self, e: AuditEntry) -> None:
        self._conn.execute(f"INSERT INTO audit ({AUDIT_COLUMNS.partition(', ')[2]}) VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit_row(e))

    async def create(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)

        def body(events: list[ChangeEvent]) -> Record:
            old = self._current(kind, mesh, name)
            if old is not None:
                raise exists_error(kind, mesh, name, old[3])
            self._log(audit, "CREATE", None, text)
            return self._put(events, kind, mesh, name, text, None, "create")

        return await self._submit(lambda: self._write(body))

    async def update(
        self, kind: str, mesh: str, name: str, doc: dict[str, Any], *, version: int | None = None,
        audit: AuditEntry | None = None
    ) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)

        def body(events: list[ChangeEvent]) -> Record:
            old = checked_row(kind, mesh, name, self._current(kind, mesh, name), itemgetter(3), version)
            self._log(audit, "UPDATE", old[4], text)
            return self._put(events, kind, mesh, name, text, old, "update")

        return await self._submit(lambda: self._write(body))

    async def upsert(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        check_key(kind, mesh, name)
        text = encode_doc(doc)

        def body(events: list[ChangeEvent]) -> Record:
            old = self._current(kind, mesh, name)
            self._log(audit, "CREATE" if old is None else "UPDATE", None if old is None else old[4], text)
            return self._put(events, kind, mesh, name, text, old, "create" if old is None else "update")

        return await self._submit(lambda: self._write(body))

    def _put(
        self,
        events: list[ChangeEvent],
        kind: str,
        mesh: str,
        name: str,
        text: str,
        old: tuple[str, str, str, int, str, float, float] | None,
        op: Op,
    ) -> Record:
        now = self._clock()
        version = 1 if old is None else old[3] + 1
        created = now if old is None else old[5]
        rev = self._event(events, kind, mesh, name, op, version)
        self._conn.execute(
            "INSERT OR REPLACE INTO resources (kind, mesh, name, version, doc, created, modified, revision)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, mesh, name, version, text, created, now, rev),
        )
        return Record(kind, mesh, name, version, decode_doc(text), created, now)

    async def get(self, kind: str, mesh: str, name: str) -> Record | None:
        def fn() -> Record | None:
            row = self._current(kind, mesh, name)
            return None if row is None else _record(row)

        return await self._read(fn)

    async def list(
        self, kind: str, *, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[Record]:
        check_page(offset, limit)
        where, args = ("kind = ?", [kind]) if mesh is None else ("kind = ? AND mesh = ?", [kind, mesh])
        sql = f"SELECT {_COLUMNS} FROM resources WHERE {where} ORDER BY mesh, name LIMIT ? OFFSET ?"
        params = (*args, -1 if limit is None else limit, offset)
        return await self._read(lambda: [_record(r) for r in self._conn.execute(sql, params)])

    async def count(self, kind: str, mesh: str | None = None) -> int:
        if mesh is None:
            sql, params = "SELECT count(*) FROM resources WHERE kind = ?", (kind,)
        else:
            sql, params = "SELECT count(*) FROM resources WHERE kind = ? AND mesh = ?", (kind, mesh)
        return await self._read(lambda: int(self._conn.execute(sql, params).fetchone()[0]))

    async def delete(self, kind: str, mesh: str, name: str, *, version: int | None = None,
                     audit: AuditEntry | None = None) -> Record:
        def body(events: list[ChangeEvent]) -> Record:
            old = checked_row(kind, mesh, name, self._current(kind, mesh, name), itemgetter(3), version)
            self._log(audit, "DELETE", old[4], None)
            self._conn.execute("DELETE FROM resources WHERE kind = ? AND mesh = ? AND name = ?", (kind, mesh, name))
            self._event(events, kind, mesh, name, "delete", old[3])
            return _record(old)

        return await self._submit(lambda: self._write(body))

    async def delete_mesh_scoped(self, mesh: str) -> int:
        if not mesh:
            raise ValueError("delete_mesh_scoped needs a mesh name; global resources are never deleted in bulk")

        def body(events: list[ChangeEvent]) -> int:
            rows = self._conn.execute(
                "SELECT kind, name, version FROM resources WHERE mesh = ? ORDER BY kind, name", (mesh,)
            ).fetchall()
            self._conn.execute("DELETE FROM resources WHERE mesh = ?", (mesh,))
            for kind, name, version in rows:
                self._event(events, kind, mesh, name, "delete", version)
            return len(rows)

        return await self._submit(lambda: self._write(body))

    async def revision(self) -> int:
        if self._closed:
            raise StoreClosed(f"the resource store {self.path} is closed")
        return self._revision

    async def append_audit(self, entry: AuditEntry) -> None:
        e = dataclasses.replace(entry, time=self._clock())
        await self._submit(lambda: self._write(lambda events: self._insert_audit(e)))

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        where, args = audit_where(query, lambda n: "?")
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit{where} ORDER BY id DESC LIMIT ?"
        return await self._read(lambda: [audit_entry(r) for r in self._conn.execute(sql, (*args, query.limit))])

    async def sweep_audit(self, *, keep: int | None = None, older_than: float | None = None) -> int:
        def body(events: list[ChangeEvent]) -> int:
            gone = 0
            if older_than is not None:
                gone += self._conn.execute("DELETE FROM audit WHERE at < ?", (older_than,)).rowcount
            if keep is not None:
                gone += self._conn.execute("DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC "
                                           "LIMIT 1 OFFSET ?)", (keep,)).rowcount
            return gone

        return await self._submit(lambda: self._write(body))

    async def subscribe(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        if self._closed:
            raise StoreClosed(f"the resource store {self.path} is closed")
        return self._hub.subscribe(max_pending)

    async def close(self) -> None:
        """Finish queued work, close the connection (checkpointing the WAL) and stop the worker thread."""
        if self._closed:
            return
        self._closed = True  # refuse new work; jobs already queued still run, in order, before the close
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((lambda: (self._conn.close(), []), fut))
        self._jobs.put(_STOP)
        await fut
        self._hub.close_all()
        await asyncio.to_thread(self._thread.join, 5.0)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _connect(path: Path, synchronous: Synchronous) -> tuple[sqlite3.Connection, int]:
    """Open, lock, tune and migrate; runs off the loop. Returns the connection and the durable revision."""
    if synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal the main file's mode
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"the resource store {path} cannot use WAL journaling (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
        revision = int(conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0])
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise ConfigError(
                f"the resource store {path} is in use by another process (is another control plane running "
                f"with the same store path?)"
            ) from exc
        raise
    except BaseException:
        conn.close()
        raise
    return conn, revision


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to len(MIGRATIONS) in one transaction; refuse files written by a newer dpagent."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = 0 if row is None else int(row[0])
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"the resource store {path} has schema version {current}, newer than this dpagent supports "
                f"({len(MIGRATIONS)}); upgrade dpagent or point it at another store"
            )
        for script in MIGRATIONS[current:]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
