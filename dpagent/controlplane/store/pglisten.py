"""One LISTEN connection per CP replica that turns the database's change notifications into local hub events.

Every event, this replica's own writes included, reaches the hub through here, in the database's commit order
(revisions come from one counter row, so they are gap-free). A writer waits until the listener has passed its
commit's revision, which keeps the store contract "events are published before the write returns" on a
multi-writer database.

A listener that loses its connection cannot know what it missed, so it overflows every subscription (the
consumers' existing full-resync path), reconnects, and overflows them once more as soon as LISTEN is active
again: a consumer that reloaded during the outage may have read state older than the first event it will get.
A gap in revisions is treated the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from dpagent.controlplane.store.base import ChangeEvent, Hub

log = logging.getLogger("dpagent.cp.store")

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class ChangeListener:
    def __init__(self, connect: Connect, channel: str, hub: Hub, *, ping_interval: float = 5.0,
                 wait_timeout: float = 10.0, retry_max: float = 5.0) -> None:
        self._connect = connect
        self._channel = channel
        self._hub = hub
        self.ping_interval = ping_interval
        self.wait_timeout = wait_timeout
        self.retry_max = retry_max
        self.seen = 0  # newest revision handed to the hub
        self.listening = False
        self.losses = 0  # how many times the connection was lost (for tests and metrics)
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and LISTEN before returning (so no commit after `open` is missed), then supervise."""
        await self._attach()
        self._task = asyncio.create_task(self._supervise(), name="pg-change-listener")
        self._task.add_done_callback(self._died)

    async def close(self) -> None:
        if self._task is not None:
            self._task.remove_done_callback(self._died)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._detach()
        self._release(everyone=True)

    # ---- writers ---------------------------------------------------------------------------------------------

    async def wait_for(self, revision: int) -> None:
        """Return once the hub has seen `revision`, or at once when events cannot arrive (consumers resync)."""
        if not self.listening or revision <= self.seen:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._seq), fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.wait_timeout)
        except TimeoutError:
            log.warning("no change notification for revision %d within %.0fs; reconnecting the listener "
                        "(subscribers resync)", revision, self.wait_timeout)
            self._lost.set()

    def _release(self, everyone: bool = False) -> None:
        while self._waiters and (everyone or self._waiters[0][0] <= self.seen):
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)

    # ---- connection ------------------------------------------------------------------------------------------

    async def _attach(self) -> None:
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(self._channel, self._on_notify)
            # LISTEN is active: every commit after this read is delivered, so nothing falls between the two.
            current = int(await conn.fetchval("SELECT value FROM counters WHERE name = 'revision'"))
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
            raise
        self._conn = conn
        self._lost.clear()
        self.seen = current
        self.listening = True
        self._release()

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:  # not a connection this listener already replaced or closed itself
            self._lost.set()

    async def _detach(self, graceful: bool = True) -> None:
        self.listening = False
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        if not graceful:
            conn.terminate()  # a connection that stopped answering would only make a polite close wait
            return
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            rev, kind, mesh, name, op, version = json.loads(payload)
        except (ValueError, TypeError):
            log.error("ignoring a malformed change notification %r; subscribers resync", payload[:200])
            self._hub.overflow_all()
            return
        if rev <= self.seen:
            return  # committed before this connection's LISTEN: already covered by a resync
        if rev != self.seen + 1:
            log.warning("change notifications skipped from revision %d to %d; subscribers resync", self.seen, rev)
            self._hub.overflow_all()
        self.seen = rev
        self._hub.publish([ChangeEvent(kind, mesh, name, op, version, rev)])
        self._release()

    async def _supervise(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self.ping_interval)
            except TimeoutError:
                if self._conn is not None and await self._ping():
                    continue
            await self._recover()

    async def _ping(self) -> bool:
        assert self._conn is not None
        try:
            await asyncio.wait_for(self._conn.fetchval("SELECT 1"), self.ping_interval)
            return True
        except Exception:
            return False

    async def _recover(self) -> None:
        self.losses += 1
        log.warning("lost the PostgreSQL change listener; subscribers resync, reconnecting")
        await self._detach(graceful=False)
        self._hub.overflow_all()
        self._release(everyone=True)
        delay = 0.05
        while True:
            try:
                await self._attach()
                break
            except Exception as e:
                log.warning("reconnecting the PostgreSQL change listener failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        self._hub.overflow_all()
        log.info("PostgreSQL change listener is back at revision %d", self.seen)

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the PostgreSQL change listener died; subscribers are stale", exc_info=task.exception())
            self.listening = False
            self._hub.overflow_all()
            self._release(everyone=True)
