"""The CA-rotation gate across replicas: leaves from a new root are issued only once every proxy of the mesh, on
every replica, has ACKed a trust bundle that holds that root.

A replica knows only its own streams, so each publishes, per mesh, the backends whose roots all of its connected
proxies have ACKed (`ReplicaBundleAck`, named after the replica), refreshed while it runs. A replica asked for a
certificate checks its own proxies and every other replica's fresh record. A record that stops being refreshed
(its replica died) no longer counts after `stale` seconds: that replica's proxies reconnect elsewhere and are
counted there. The leader deletes records left by dead replicas. On SQLite there is one replica and none of this
is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from dpagent.controlplane.store import ResourceStore, StoreUnavailable
from dpagent.errors import Conflict, NotFound
from dpagent.log import kv

log = logging.getLogger("dpagent.cp.bundle_acks")

KIND = "ReplicaBundleAck"


class BundleAcks:
    def __init__(self, store: ResourceStore, instance_id: str, *, local: Callable[[str, str], bool],
                 meshes: Callable[[], Iterable[tuple[str, tuple[str, ...]]]], is_leader: Callable[[], bool],
                 clock: Callable[[], float] = time.time, heartbeat: float = 5.0, stale: float = 20.0) -> None:
        """`local(mesh, backend)`: this replica's proxies all ACKed that root; `meshes()`: (mesh, bundle backends)
        of every mesh this replica generates config for."""
        self.store = store
        self.instance_id = instance_id
        self.local = local
        self.meshes = meshes
        self.is_leader = is_leader
        self.clock = clock
        self.heartbeat = heartbeat
        self.stale = stale
        self._published: dict[str, tuple[tuple[str, ...], float]] = {}  # mesh -> (acked, when written)

    async def can_issue(self, mesh: str, backend: str) -> bool:
        if not self.local(mesh, backend):
            return False
        now = self.clock()
        for rec in await self.store.list(KIND, mesh=mesh):
            if rec.name == self.instance_id or now - float(rec.doc.get("heartbeat") or 0) > self.stale:
                continue
            if backend not in (rec.doc.get("acked") or []):
                return False
        return True

    async def publish(self) -> None:
        now = self.clock()
        current = {mesh: tuple(b for b in backends if self.local(mesh, b)) for mesh, backends in self.meshes()}
        for mesh, acked in sorted(current.items()):
            last = self._published.get(mesh)
            if last is not None and last[0] == acked and now - last[1] < self.heartbeat:
                continue
            await self.store.upsert(KIND, mesh, self.instance_id, {"type": KIND, "mesh": mesh,
                                                                  "name": self.instance_id, "acked": list(acked),
                                                                  "heartbeat": now})
            self._published[mesh] = (acked, now)
        for mesh in sorted(set(self._published) - set(current)):
            del self._published[mesh]
            with contextlib.suppress(NotFound):
                await self.store.delete(KIND, mesh, self.instance_id)

    async def sweep_dead(self) -> int:
        """Leader only: forget the records of replicas that stopped refreshing them long ago."""
        if not self.is_leader():
            return 0
        now, gone = self.clock(), 0
        for rec in await self.store.list(KIND):
            if rec.name != self.instance_id and now - float(rec.doc.get("heartbeat") or 0) > 3 * self.stale:
                with contextlib.suppress(NotFound, Conflict):  # Conflict: it came back meanwhile
                    await self.store.delete(KIND, rec.mesh, rec.name, version=rec.version)
                    gone += 1
                    kv(log, logging.INFO, "removed the bundle ACKs of a replica gone", mesh=rec.mesh,
                       instance=rec.name)
        return gone

    async def run(self, interval: float = 1.0) -> None:
        """Supervised: publish this replica's view, and clean up after dead replicas while leading."""
        while True:
            with contextlib.suppress(StoreUnavailable):  # reported by the store; the next round retries
                await self.publish()
                await self.sweep_dead()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """A replica stopping cleanly withdraws its records, so no one waits for them to go stale."""
        for mesh in sorted(self._published):
            with contextlib.suppress(Exception):
                await self.store.delete(KIND, mesh, self.instance_id)
        self._published.clear()
