"""The store contract every control-plane module codes against, plus the pieces both backends share.

Keeping the contract (records, change events, subscriptions, error wording) here means the SQLite store and the
in-memory fake cannot drift apart in behaviour: the same tests run against both.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from dpagent.errors import EXIT_CP_UNREACHABLE, Conflict, DpAgentError, NotFound

Op = Literal["create", "update", "delete"]

#: Default bound of a subscription's queue. Large enough that a consumer which debounces (the xDS layer) never
#: hits it in steady state, small enough (~2 MB of events) that a stuck consumer cannot grow the CP without limit.
DEFAULT_MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class Record:
    """One stored resource. `doc` is a private copy: callers may mutate it without affecting the store."""

    kind: str
    mesh: str
    name: str
    version: int
    doc: dict[str, Any]
    created: float
    modified: float


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A committed change. `revision` is store-wide and durable, so consumers can order and de-duplicate."""

    kind: str
    mesh: str
    name: str
    op: Op
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit-log row: who did what to which resource, and how it ended.

    A write that carries an entry (`audit=` on create/update/upsert/delete) stores it in the transaction that makes
    the change, filling `time`, `access` (CREATE or UPDATE for an upsert) and the before/after digests from the rows
    it reads and writes there: the change and its record commit together or not at all. `digests=False` (secrets)
    keeps digests out, since a hash of a short secret can be guessed back."""

    who: str
    groups: tuple[str, ...]
    source: str
    access: str  # CREATE, UPDATE, DELETE, GENERATE_USER_TOKEN, ...
    kind: str
    mesh: str
    name: str
    outcome: str  # "allowed", "denied" or "failed"
    detail: str = ""
    before: str = ""
    after: str = ""
    time: float = 0.0
    id: int = 0
    digests: bool = True


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of `audit_entries`; empty fields match everything. Newest entries first."""

    who: str = ""
    kind: str = ""
    mesh: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


def digest(text: str | None) -> str:
    """A short fingerprint of a stored document: tells versions apart in the audit log without copying them."""
    return "" if text is None else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def stamped(entry: AuditEntry, access: str, before: str | None, after: str | None, now: float) -> AuditEntry:
    """The entry as a write stores it: its time, the access that happened, and digests when allowed."""
    return dataclasses.replace(entry, access=access, time=now, before=digest(before) if entry.digests else "",
                               after=digest(after) if entry.digests else "")


def audit_matches(e: AuditEntry, q: AuditQuery) -> bool:
    return ((not q.who or e.who == q.who) and (not q.kind or e.kind == q.kind)
            and (q.mesh is None or e.mesh == q.mesh) and (q.since is None or e.time >= q.since)
            and (q.until is None or e.time < q.until))


class StoreClosed(DpAgentError):
    """Raised by any call after `close()`: a late caller is a shutdown-ordering bug and should say so loudly."""


class StoreUnavailable(DpAgentError):
    """A networked store (PostgreSQL) could not be reached or dropped the connection mid-call."""

    exit_code = EXIT_CP_UNREACHABLE


class SubscriptionOverflow(DpAgentError):
    """The consumer fell more than `max_pending` events behind; its view is stale and it must resync.

    Raised from iteration (rather than only setting a flag) so that a consumer which forgets to check
    `overflowed` fails visibly instead of silently serving stale config.
    """


def describe(kind: str, mesh: str, name: str) -> str:
    """Human wording for a resource key, the same in every error message of both backends."""
    return f'{kind} "{name}"' + (f' in mesh "{mesh}"' if mesh else "")


def encode_doc(doc: dict[str, Any]) -> str:
    """Serialise before any write so a non-JSON document fails in the caller, never half-way through a commit."""
    if not isinstance(doc, dict):
        raise TypeError(f"resource document must be a dict, got {type(doc).__name__}")
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"resource document holds text that is not valid Unicode: {exc.reason}") from exc
    return text


#: Every read decodes each document afresh (callers get private copies); msgspec decodes ~2.6x faster than the
#: json module, which is most of the cost of listing 1,000 Dataplanes. Encoding stays on `json` for allow_nan=False.
decode_doc: Callable[[str], Any] = msgspec.json.Decoder().decode


def check_key(kind: str, mesh: str, name: str) -> None:
    """Reject empty kinds and names early: they would create rows no API path can ever address again."""
    if not kind or not isinstance(kind, str):
        raise ValueError("resource kind must be a non-empty string")
    if not isinstance(mesh, str):
        raise ValueError('resource mesh must be a string ("" for global kinds)')
    if not name or not isinstance(name, str):
        raise ValueError("resource name must be a non-empty string")


def check_page(offset: int, limit: int | None) -> None:
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0 or None")


def exists_error(kind: str, mesh: str, name: str, version: int) -> Conflict:
    return Conflict(f"{describe(kind, mesh, name)} already exists (version {version}); update it instead")


def not_found_error(kind: str, mesh: str, name: str) -> NotFound:
    return NotFound(f"{describe(kind, mesh, name)} not found")


def version_error(kind: str, mesh: str, name: str, expected: int, current: int) -> Conflict:
    return Conflict(
        f"{describe(kind, mesh, name)} was changed by someone else: expected version {expected}, "
        f"current version is {current}; read it again and retry"
    )


_Row = TypeVar("_Row")


def checked_row(kind: str, mesh: str, name: str, row: _Row | None, version_of: Callable[[_Row], int],
                expected: int | None) -> _Row:
    """The current row an update or delete works on, checked the same way in every store: it exists (else
    NotFound) and, when the caller names the version it read, that version is still the current one (else
    Conflict), which is what makes a read-modify-write safe without locks held across requests."""
    if row is None:
        raise not_found_error(kind, mesh, name)
    if expected is not None and expected != version_of(row):
        raise version_error(kind, mesh, name, expected, version_of(row))
    return row


class Subscription:
    """Change events committed after subscribing, in commit order, for one consumer.

    Bounded on purpose: an unbounded queue lets one stuck consumer grow the CP's memory forever, and every consumer
    needs a full-resync path anyway (it has to load the initial state). So on overflow we drop the queued events,
    set `overflowed` and raise SubscriptionOverflow from iteration; the consumer calls `resync()` (which starts
    delivery again) and then reloads the state it cares about. Events arriving between `resync()` and the reload
    are delivered too, so a consumer must apply events idempotently (compare `version` or `revision`).
    Writers never wait on subscribers.
    """

    def __init__(self, hub: Hub, max_pending: int) -> None:
        self._hub = hub
        self._max_pending = max_pending
        self._queue: collections.deque[ChangeEvent] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.overflowed = False

    def _push(self, event: ChangeEvent) -> None:
        if self._closed or self.overflowed:
            return
        if len(self._queue) >= self._max_pending:
            self._overflow()
        else:
            self._queue.append(event)
            self._wake()

    def _overflow(self) -> None:
        if self._closed:
            return
        self.overflowed = True
        self._queue.clear()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def pending(self) -> int:
        return len(self._queue)

    def resync(self) -> None:
        """Acknowledge an overflow: delivery restarts with the next commit; reload state after calling this."""
        self.overflowed = False
        self._queue.clear()

    def close(self) -> None:
        """Stop delivery and drop anything buffered; an `async for` over this subscription ends at once."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._hub.remove(self)
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self.overflowed:
                raise SubscriptionOverflow(
                    f"store subscriber fell more than {self._max_pending} events behind; call resync() and reload"
                )
            if self._queue:
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Fan-out of committed events. Only ever called on the event-loop thread, so it needs no locks."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(self, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        sub = Subscription(self, max_pending)
        self._subs.append(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, events: list[ChangeEvent]) -> None:
        for sub in list(self._subs):
            for event in events:
                sub._push(event)

    def overflow_all(self) -> None:
        """Events may have been missed (a backend lost its change feed): every consumer must resync and reload."""
        for sub in list(self._subs):
            sub._overflow()

    def close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()


@runtime_checkable
class ResourceStore(Protocol):
    """The single source of truth for Meshes, Dataplanes, policies and secrets.

    Keys are (kind, mesh, name); `mesh` is "" for global kinds (Mesh, GlobalSecret). The store does not know which
    kinds are mesh-scoped and does not cascade: deleting a Mesh is `delete` plus `delete_mesh_scoped`, decided by
    the caller. Every write returns only after it is durable, and its events are published before it returns.
    """

    async def create(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record: ...

    async def update(
        self, kind: str, mesh: str, name: str, doc: dict[str, Any], *, version: int | None = None,
        audit: AuditEntry | None = None
    ) -> Record: ...

    async def upsert(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record: ...

    async def get(self, kind: str, mesh: str, name: str) -> Record | None: ...

    async def list(
        self, kind: str, *, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[Record]: ...

    async def count(self, kind: str, mesh: str | None = None) -> int: ...

    async def delete(self, kind: str, mesh: str, name: str, *, version: int | None = None,
                     audit: AuditEntry | None = None) -> Record: ...

    async def delete_mesh_scoped(self, mesh: str) -> int: ...

    async def revision(self) -> int: ...

    async def append_audit(self, entry: AuditEntry) -> None:
        """An audit entry on its own: refusals, failures, and acts that change no resource (issuing a token)."""
        ...

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]: ...

    async def sweep_audit(self, *, keep: int | None = None, older_than: float | None = None) -> int:
        """Drop entries beyond the newest `keep` and those written before `older_than`; idempotent, so every
        replica may run it."""
        ...

    async def subscribe(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription: ...

    async def close(self) -> None: ...
