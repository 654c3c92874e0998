"""Proxies on their way out, kept in the store so every replica agrees: who is draining, who has gone.

With several replicas an agent's `/leave` may reach replica A while its Envoy's ADS stream is on replica B, and
the replica that saw a proxy go may die before the deregistration delay is over. So the facts live in one
`DataplaneDeparture` record per proxy (written only when a proxy drains or goes, never on an ordinary connect):

- `drainingSince`: `/leave` was called; every replica withdraws the proxy's endpoints from its clients;
- `disconnectedAt` + `direct`: the last stream of a proxy that registered itself closed after a goodbye or a
  drain; the leader deletes its Dataplane once the delay (from the drain's start, else from the disconnect) is over.

A stream that opens again clears `disconnectedAt` (the proxy is back, and possibly still draining: a draining
Envoy whose replica died reconnects elsewhere); a new `/bootstrap` (a restarted agent) forgets the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from dpagent.controlplane.identity import INSIGHT
from dpagent.controlplane.secrets import retry_on_conflict
from dpagent.controlplane.store import ResourceStore, StoreUnavailable, SubscriptionOverflow
from dpagent.controlplane.xds.nodeid import node_id
from dpagent.errors import Conflict, NotFound
from dpagent.log import kv

log = logging.getLogger("dpagent.cp.departures")

DEPARTURE = "DataplaneDeparture"
Key = tuple[str, str]


class LeavingSink(Protocol):
    def set_leaving(self, mesh: str, name: str, leaving: bool) -> None: ...


class Departures:
    def __init__(self, store: ResourceStore, sink: LeavingSink, *, delay: float, is_leader: Callable[[], bool],
                 clock: Callable[[], float] = time.time,
                 is_local: Callable[[str, str], bool] = lambda mesh, name: False) -> None:
        """`is_local(mesh, name)`: this replica holds a live stream of that proxy."""
        self.store = store
        self.is_local = is_local
        self.sink = sink
        self.delay = delay
        self.is_leader = is_leader
        self.clock = clock
        self.known: dict[Key, tuple[int, dict[str, Any]]] = {}  # (mesh, name) -> (version, doc), from the store
        # One set per full re-read in flight: the keys read one by one meanwhile, whose reads are newer than the
        # listing's snapshot (see _read_all).
        self._in_flight: list[set[Key]] = []
        self.deregistered = 0

    # ---- following the store (every replica) --------------------------------------------------------------

    async def follow(self) -> None:
        """Keep `known` and the sink's draining set equal to the store (supervised; never returns)."""
        sub = await self.store.subscribe()
        await self._reload()
        while True:
            try:
                async for ev in sub:
                    if ev.kind == DEPARTURE:
                        await self._refresh((ev.mesh, ev.name))
                        await self._still_here(ev.mesh, ev.name)
            except SubscriptionOverflow:
                sub.resync()
                await self._reload()
            except StoreUnavailable:
                # The database went away mid-event. Its listener overflows every subscription once it is back,
                # and the reload above then reads what was missed; until then the cache stays as it was.
                pass

    async def _reload(self) -> None:
        while True:
            try:
                await self._read_all()
                return
            except StoreUnavailable:
                await asyncio.sleep(1.0)  # the outage is logged by the store; retry quietly

    async def _read_all(self) -> None:
        """Replace the cache with a listing of every record, except the keys read one by one while the listing was
        in flight: a departure recorded meanwhile may be missing from the listing's older snapshot, and dropping
        it from the cache would keep the proxy registered (and no longer draining) until the next re-read."""
        touched: set[Key] = set()
        self._in_flight.append(touched)
        try:
            fresh = {(r.mesh, r.name): (r.version, r.doc) for r in await self.store.list(DEPARTURE)}
        finally:
            self._in_flight.remove(touched)
        for key in (set(self.known) | set(fresh)) - touched:
            self._set(key, fresh.get(key))

    async def _refresh(self, key: Key) -> None:
        rec = await self.store.get(DEPARTURE, *key)
        self._set(key, (rec.version, rec.doc) if rec else None)

    def _set(self, key: Key, value: tuple[int, dict[str, Any]] | None) -> None:
        for touched in self._in_flight:
            touched.add(key)
        if value is None:
            self.known.pop(key, None)
        else:
            self.known[key] = value
        self.sink.set_leaving(key[0], key[1], bool(value and value[1].get("drainingSince") is not None))

    async def _still_here(self, mesh: str, name: str) -> None:
        """Another replica saw an older stream of this proxy say goodbye while its live stream is here: the proxy
        has not gone, so the pending deregistration is cancelled before the leader acts on it."""
        hit = self.known.get((mesh, name))
        if hit is not None and hit[1].get("disconnectedAt") is not None and self.is_local(mesh, name):
            kv(log, logging.INFO, "a proxy said goodbye on another replica but is connected here; keeping it",
               proxy=node_id(mesh, name))
            await self.connected(mesh, name)

    def draining(self, mesh: str, name: str) -> bool:
        hit = self.known.get((mesh, name))
        return bool(hit and hit[1].get("drainingSince") is not None)

    # ---- what a replica saw -------------------------------------------------------------------------------

    async def drain(self, mesh: str, name: str) -> None:
        """`/leave`: the agent is draining (idempotent: a repeated call keeps the first start)."""
        await self._edit(mesh, name, lambda doc: doc if doc.get("drainingSince") is not None
                         else {**doc, "drainingSince": self.clock()})
        await self._refresh((mesh, name))

    async def disconnected(self, mesh: str, name: str, *, direct: bool, graceful: bool) -> None:
        """The proxy's last stream on this replica closed. Only a proxy that registered itself is deregistered,
        and only after a goodbye or a drain: a crash or a network blip must not delete it."""
        if not direct or not (graceful or self.draining(mesh, name)):
            return
        await self._edit(mesh, name, lambda doc: {**doc, "disconnectedAt": self.clock(), "direct": True})
        await self._refresh((mesh, name))  # this replica's sweep need not wait for the change event

    async def connected(self, mesh: str, name: str) -> None:
        """A stream opened: cancel a pending deregistration (read from the cache: no store call per connect)."""
        hit = self.known.get((mesh, name))
        if hit is None or hit[1].get("disconnectedAt") is None:
            return
        with contextlib.suppress(NotFound):
            await self._edit(mesh, name, lambda doc: {k: v for k, v in doc.items() if k != "disconnectedAt"},
                             create=False)

    async def bootstrapped(self, mesh: str, name: str) -> None:
        """A new agent run for this dataplane: whatever the previous one was doing is over."""
        if (mesh, name) in self.known:
            with contextlib.suppress(NotFound):
                await self.store.delete(DEPARTURE, mesh, name)

    async def _edit(self, mesh: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                    create: bool = True) -> None:
        async def step() -> None:
            rec = await self.store.get(DEPARTURE, mesh, name)
            if rec is None:
                if not create:
                    raise NotFound(f"{DEPARTURE} {mesh}/{name}")
                await self.store.create(DEPARTURE, mesh, name, change({"type": DEPARTURE, "mesh": mesh,
                                                                       "name": name}))
            else:
                new = change(rec.doc)
                if new != rec.doc:
                    await self.store.update(DEPARTURE, mesh, name, new, version=rec.version)

        await retry_on_conflict(step, f"recording the departure of {mesh}/{name}")

    # ---- the leader's job ---------------------------------------------------------------------------------

    def due(self, now: float) -> list[tuple[Key, int, dict[str, Any]]]:
        out = []
        for key, (version, doc) in sorted(self.known.items()):
            gone = doc.get("disconnectedAt")
            if gone is None or not doc.get("direct"):
                continue
            start = doc.get("drainingSince")
            start = gone if start is None else min(start, gone)
            if now >= start + self.delay:
                out.append((key, version, doc))
        return out

    async def sweep(self) -> int:
        """Deregister every departed proxy whose delay is over.

        The record is claimed first with a version check, so a proxy that reconnected meanwhile (on any replica)
        keeps its Dataplane. The Dataplane goes before the record: deleting the record ends "draining" on every
        replica, and a replica that rebuilt its config between the two deletes would otherwise hand the departed
        proxy's endpoints (and its scrape target) out again for a moment."""
        if not self.is_leader():
            return 0
        done = 0
        for (mesh, name), version, doc in self.due(self.clock()):
            try:
                await self.store.update(DEPARTURE, mesh, name, {**doc, "deregistering": True}, version=version)
            except (Conflict, NotFound):
                continue
            for kind in ("Dataplane", INSIGHT):
                with contextlib.suppress(NotFound):
                    await self.store.delete(kind, mesh, name)
            with contextlib.suppress(NotFound):
                await self.store.delete(DEPARTURE, mesh, name)
            done += 1
            self.deregistered += 1
            kv(log, logging.INFO, "deregistered dataplane after it left", proxy=node_id(mesh, name))
        return done

    async def sweep_forever(self, interval: float = 0.5, reread_every: int = 20) -> None:
        """Supervised: the sweep runs on every replica's clock but acts only while this replica leads. The leader
        also re-reads every departure record now and then (they are few), so a departure whose change event was
        missed is still deregistered instead of staying registered for good."""
        rounds = 0
        while True:
            with contextlib.suppress(StoreUnavailable):  # reported by the store; the next round retries
                rounds += 1
                if self.is_leader() and rounds % reread_every == 0:
                    await self._read_all()
                await self.sweep()
            await asyncio.sleep(interval)
