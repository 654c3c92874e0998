"""Audit-log rows as both SQL backends store them: one column list and one query builder, so SQLite and
PostgreSQL answer `GET /audit` filters identically."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpagent.controlplane.store.base import AuditEntry, AuditQuery

AUDIT_COLUMNS = "id, at, who, groups_, source, access, kind, mesh, name, outcome, detail, before_digest, after_digest"


def audit_row(e: AuditEntry) -> tuple[Any, ...]:
    return (e.time, e.who, "\n".join(e.groups), e.source, e.access, e.kind, e.mesh, e.name, e.outcome, e.detail,
            e.before, e.after)


def audit_entry(row: Any) -> AuditEntry:
    return AuditEntry(id=row[0], time=row[1], who=row[2], groups=tuple(g for g in row[3].split("\n") if g),
                      source=row[4], access=row[5], kind=row[6], mesh=row[7], name=row[8], outcome=row[9],
                      detail=row[10], before=row[11], after=row[12])


def audit_where(q: AuditQuery, mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The WHERE clause of an audit query (placeholders from `mark(n)`: `?` for SQLite, `$n` for PostgreSQL)."""
    clauses, args = [], []
    for column, op, value in (("who", "=", q.who or None), ("kind", "=", q.kind or None), ("mesh", "=", q.mesh),
                              ("at", ">=", q.since), ("at", "<", q.until)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {op} {mark(len(args))}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args
