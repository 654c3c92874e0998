"""In-memory ResourceStore for fast unit tests of other modules (never for production: nothing survives exit).

It keeps documents as JSON text, exactly like the SQLite store, so a test that passes here cannot depend on
sharing dicts with the store or on storing something that is not JSON.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

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
    audit_matches,
    check_key,
    check_page,
    checked_row,
    decode_doc,
    encode_doc,
    exists_error,
    stamped,
)

Key = tuple[str, str, str]


@dataclass(slots=True)
class _Row:
    version: int
    doc: str
    created: float
    modified: float



class MemoryStore:
    """Same contract as SqliteStore; each call runs to completion without awaiting, so writes are atomic."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._rows: dict[Key, _Row] = {}
        self._clock = clock
        self._revision = 0
        self._hub = Hub()
        self._closed = False
        self._audit: list[AuditEntry] = []
        self._audit_seq = 0

    @classmethod
    async def open(cls, *, clock: Callable[[], float] = time.time) -> MemoryStore:
        return cls(clock=clock)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the resource store is closed")

    def _record(self, key: Key, row: _Row) -> Record:
        return Record(key[0], key[1], key[2], row.version, decode_doc(row.doc), row.created, row.modified)

    def _commit(self, events: list[tuple[Key, Op, int]]) -> None:
        out = []
        for (kind, mesh, name), op, version in events:
            self._revision += 1
            out.append(ChangeEvent(kind, mesh, name, op, version, self._revision))
        self._hub.publish(out)

    def _log(self, entry: AuditEntry | None, access: str, before: str | None, after: str | None) -> None:
        """Part of the same uninterrupted step as the change it records (nothing here awaits)."""
        if entry is not None:
            self._insert_audit(stamped(entry, access, before, after, self._clock()))

    def _insert_audit(self, e: AuditEntry) -> None:
        self._audit_seq += 1
        self._audit.append(dataclasses.replace(e, id=self._audit_seq))

    async def create(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        self._check_open()
        check_key(kind, mesh, name)
        text = encode_doc(doc)
        key = (kind, mesh, name)
        if (old := self._rows.get(key)) is not None:
            raise exists_error(kind, mesh, name, old.version)
        now = self._clock()
        self._log(audit, "CREATE", None, text)
        row = self._rows[key] = _Row(1, text, now, now)
        self._commit([(key, "create", 1)])
        return self._record(key, row)

    async def update(
        self, kind: str, mesh: str, name: str, doc: dict[str, Any], *, version: int | None = None,
        audit: AuditEntry | None = None
    ) -> Record:
        self._check_open()
        check_key(kind, mesh, name)
        text = encode_doc(doc)
        key = (kind, mesh, name)
        old = checked_row(kind, mesh, name, self._rows.get(key), attrgetter("version"), version)
        self._log(audit, "UPDATE", old.doc, text)
        row = self._rows[key] = _Row(old.version + 1, text, old.created, self._clock())
        self._commit([(key, "update", row.version)])
        return self._record(key, row)

    async def upsert(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        self._check_open()
        check_key(kind, mesh, name)
        if (kind, mesh, name) in self._rows:
            return await self.update(kind, mesh, name, doc, audit=audit)
        return await self.create(kind, mesh, name, doc, audit=audit)

    async def get(self, kind: str, mesh: str, name: str) -> Record | None:
        self._check_open()
        row = self._rows.get((kind, mesh, name))
        return None if row is None else self._record((kind, mesh, name), row)

    async def list(
        self, kind: str, *, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[Record]:
        self._check_open()
        check_page(offset, limit)
        keys = sorted(k for k in self._rows if k[0] == kind and (mesh is None or k[1] == mesh))
        end = None if limit is None else offset + limit
        return [self._record(k, self._rows[k]) for k in keys[offset:end]]

    async def count(self, kind: str, mesh: str | None = None) -> int:
        self._check_open()
        return sum(1 for k in self._rows if k[0] == kind and (mesh is None or k[1] == mesh))

    async def delete(self, kind: str, mesh: str, name: str, *, version: int | None = None,
                     audit: AuditEntry | None = None) -> Record:
        self._check_open()
        key = (kind, mesh, name)
        old = checked_row(kind, mesh, name, self._rows.get(key), attrgetter("version"), version)
        self._log(audit, "DELETE", old.doc, None)
        del self._rows[key]
        self._commit([(key, "delete", old.version)])
        return self._record(key, old)

    async def delete_mesh_scoped(self, mesh: str) -> int:
        self._check_open()
        if not mesh:
            raise ValueError("delete_mesh_scoped needs a mesh name; global resources are never deleted in bulk")
        keys = sorted(k for k in self._rows if k[1] == mesh)
        events: list[tuple[Key, Op, int]] = [(k, "delete", self._rows.pop(k).version) for k in keys]
        self._commit(events)
        return len(events)

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    async def append_audit(self, entry: AuditEntry) -> None:
        self._check_open()
        self._insert_audit(dataclasses.replace(entry, time=self._clock()))

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        self._check_open()
        out = []
        for e in reversed(self._audit):
            if len(out) >= query.limit:
                break
            if audit_matches(e, query):
                out.append(e)
        return out

    async def sweep_audit(self, *, keep: int | None = None, older_than: float | None = None) -> int:
        self._check_open()
        before = len(self._audit)
        kept = [e for e in self._audit if older_than is None or e.time >= older_than]
        if keep is not None:
            kept = kept[max(0, len(kept) - keep):]
        self._audit = kept
        return before - len(kept)

    async def subscribe(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        self._check_open()
        return self._hub.subscribe(max_pending)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub.close_all()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
