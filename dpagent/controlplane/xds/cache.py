"""Per-node snapshot cache: the latest snapshot of each proxy, the streams watching it, and what each proxy did.

Streams do not poll: `set_snapshot` wakes the node's watches with the set of types whose version changed, and a
snapshot that changes nothing wakes nobody. The cache also keeps the per-node delivery record (sent, ACKed,
NACKed with Envoy's error) that `inspect` shows, because "is my config applied?" is the first operator question.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpagent.controlplane.xds.snapshot import Snapshot, response_rank


class Watch:
    """One stream's interest in a node: a set of types to (re)consider, and an event to wake the stream.

    The stream marks types here itself too (a new request, a backoff that expired), so it has one thing to await.
    """

    __slots__ = ("_event", "_pending", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._pending: set[str] = set()
        self._event = asyncio.Event()

    def mark(self, type_urls: set[str] | frozenset[str] | list[str]) -> None:
        if type_urls:
            self._pending.update(type_urls)
            self._event.set()

    async def wait(self) -> list[str]:
        """Block until some type needs a look; return those types in response order and forget them."""
        while not self._pending:
            self._event.clear()
            await self._event.wait()
        out = sorted(self._pending, key=response_rank)
        self._pending.clear()
        self._event.clear()
        return out


@dataclass
class _Nack:
    version: str
    error: str
    at: float


@dataclass
class _TypeStatus:
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_at: float | None = None
    acked_version: str | None = None
    acked_at: float | None = None
    nack: _Nack | None = None
    pushes: int = 0


@dataclass
class _NodeStatus:
    streams: int = 0
    since: float | None = None
    last_disconnect: float | None = None
    pushes: int = 0
    types: dict[str, _TypeStatus] = field(default_factory=dict)
    # (epoch seconds, "connected" | "disconnected"), newest last: the GUI's connection history.
    history: collections.deque[tuple[float, str]] = field(default_factory=lambda: collections.deque(maxlen=20))


class SnapshotCache:
    """Latest snapshot per node id plus watches and delivery status; single event loop, no locks needed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, set[Watch]] = {}
        self._status: dict[str, _NodeStatus] = {}
        # Bumped by every change a viewer could see (snapshot, stream, ACK, NACK): the GUI polls it with the store's
        # revision to learn that a page is stale without re-reading anything.
        self.changes = 0

    # -- snapshots -----------------------------------------------------------------------------------------------
    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> list[str]:
        """Store the snapshot; wake watchers for the types whose version changed, and return those types.

        Unchanged types keep the previous Snapshot's resources untouched, so nothing is re-sent or re-joined.
        """
        old = self._snapshots.get(node_id)
        if old is None:
            changed = snapshot.types()
        else:
            types = set(old.types()) | set(snapshot.types())
            changed = sorted((t for t in types if old.version(t) != snapshot.version(t)), key=response_rank)
            if not changed:
                return []
        self._snapshots[node_id] = snapshot
        self.changes += 1
        for w in self._watches.get(node_id, ()):
            w.mark(changed)
        return changed

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> None:
        """Forget a node's snapshot and status (e.g. its Dataplane was deleted); open streams keep what they have."""
        self._snapshots.pop(node_id, None)
        st = self._status.get(node_id)
        if st is not None and st.streams == 0:
            del self._status[node_id]

    def node_ids(self) -> list[str]:
        return sorted(set(self._snapshots) | set(self._status))

    # -- watches -------------------------------------------------------------------------------------------------
    def watch(self, node_id: str) -> Watch:
        w = Watch(node_id)
        self._watches.setdefault(node_id, set()).add(w)
        return w

    def cancel_watch(self, watch: Watch) -> None:
        ws = self._watches.get(watch.node_id)
        if ws is not None:
            ws.discard(watch)
            if not ws:
                del self._watches[watch.node_id]

    # -- delivery record (written by the ADS server) -------------------------------------------------------------
    def _node(self, node_id: str) -> _NodeStatus:
        st = self._status.get(node_id)
        if st is None:
            st = self._status[node_id] = _NodeStatus()
        return st

    def _type(self, node_id: str, type_url: str) -> _TypeStatus:
        node = self._node(node_id)
        ts = node.types.get(type_url)
        if ts is None:
            ts = node.types[type_url] = _TypeStatus()
        return ts

    def stream_opened(self, node_id: str) -> None:
        st = self._node(node_id)
        if st.streams == 0:
            st.since = self._clock()
            st.history.append((st.since, "connected"))
        st.streams += 1
        self.changes += 1

    def stream_closed(self, node_id: str) -> None:
        st = self._node(node_id)
        st.streams = max(0, st.streams - 1)
        if st.streams == 0:
            st.last_disconnect = self._clock()
            st.history.append((st.last_disconnect, "disconnected"))
        self.changes += 1

    def record_sent(self, node_id: str, type_url: str, version: str, nonce: str) -> None:
        ts = self._type(node_id, type_url)
        ts.sent_version, ts.sent_nonce, ts.sent_at = version, nonce, self._clock()
        ts.pushes += 1
        self._node(node_id).pushes += 1

    def record_ack(self, node_id: str, type_url: str, version: str) -> None:
        ts = self._type(node_id, type_url)
        ts.acked_version, ts.acked_at = version, self._clock()
        if ts.nack is not None and ts.nack.version == version:
            ts.nack = None
        self.changes += 1

    def record_nack(self, node_id: str, type_url: str, version: str, error: str) -> None:
        self._type(node_id, type_url).nack = _Nack(version, error, self._clock())
        self.changes += 1

    def history(self, node_id: str) -> list[tuple[float, str]]:
        st = self._status.get(node_id)
        return list(st.history) if st is not None else []

    def stream_count(self, node_id: str) -> int:
        st = self._status.get(node_id)
        return st.streams if st is not None else 0

    def is_connected(self, node_id: str) -> bool:
        st = self._status.get(node_id)
        return st is not None and st.streams > 0

    def status(self, node_id: str) -> dict[str, Any] | None:
        """JSON-able delivery record for `inspect`; None for a node never seen."""
        st = self._status.get(node_id)
        snap = self._snapshots.get(node_id)
        if st is None and snap is None:
            return None
        st = st or _NodeStatus()
        types: dict[str, Any] = {}
        for type_url in sorted(set(st.types) | set(snap.types() if snap else ()), key=response_rank):
            ts = st.types.get(type_url) or _TypeStatus()
            types[type_url] = {
                "snapshot_version": snap.version(type_url) if snap else None,
                "sent_version": ts.sent_version,
                "sent_nonce": ts.sent_nonce,
                "sent_at": ts.sent_at,
                "acked_version": ts.acked_version,
                "acked_at": ts.acked_at,
                "nack": None if ts.nack is None else
                {"version": ts.nack.version, "error": ts.nack.error, "at": ts.nack.at},
                "pushes": ts.pushes,
            }
        return {
            "node_id": node_id,
            "connected": st.streams > 0,
            "streams": st.streams,
            "since": st.since if st.streams > 0 else None,
            "last_disconnect": st.last_disconnect,
            "pushes": st.pushes,
            "types": types,
        }
