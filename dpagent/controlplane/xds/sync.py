"""Turn store changes into per-proxy snapshots: debounced, one regeneration per touched mesh.

Per change, the shared part of a mesh (each service's cluster and endpoints) is generated and serialised once
(`Resource`), and every connected proxy of that mesh gets a snapshot that references those same objects plus its
own listeners. Generation runs in a worker thread so ADS streams keep flowing while a large mesh is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from dpagent.controlplane.store import ChangeEvent, ResourceStore, SubscriptionOverflow
from dpagent.controlplane.xds.proxy import MeshContext, generate_proxy, generate_shared, proxy_warnings
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Resource, Snapshot
from dpagent.log import kv
from dpagent.model.dataplane import Dataplane, parse_dataplane
from dpagent.model.mesh import parse_mesh
from dpagent.model.meshtrafficpermission import KIND as MTP
from dpagent.model.meshtrafficpermission import parse_meshtrafficpermission

log = logging.getLogger("dpagent.cp.sync")

# Kinds whose changes alter Envoy config. Secrets and insights do not: certificates travel as files on the host.
CONFIG_KINDS = frozenset({"Mesh", "Dataplane", MTP})
POLICY_PARSERS = {MTP: parse_meshtrafficpermission}


@dataclasses.dataclass(frozen=True)
class MeshState:
    ctx: MeshContext
    by_name: dict[str, Dataplane]
    shared: dict[str, dict[str, Resource]]


def node_id(mesh: str, name: str) -> str:
    return f"{mesh}.{name}"


def build_mesh_state(mesh_doc: dict[str, Any], dp_docs: list[dict[str, Any]],
                     policy_docs: dict[str, list[dict[str, Any]]]) -> MeshState:
    """Pure: parse and generate the shared part once (wrapped so each message is serialised once)."""
    dps = [parse_dataplane(d) for d in dp_docs]
    policies = {kind: [POLICY_PARSERS[kind](d) for d in docs] for kind, docs in policy_docs.items()}
    ctx = MeshContext(parse_mesh(mesh_doc), dps, policies)
    shared = {t: {n: Resource(n, m, t) for n, m in by_name.items()} for t, by_name in generate_shared(ctx).items()}
    return MeshState(ctx, {d.name: d for d in dps}, shared)


def proxy_snapshot(state: MeshState, dp: Dataplane) -> Snapshot:
    """The proxy's own resources plus the shared clusters/endpoints of the services it calls."""
    own = generate_proxy(state.ctx, dp, shared={})
    wanted = {ob.service for ob in dp.networking.outbound}
    clusters: dict[str, Any] = {n: r for n, r in state.shared.get(CLUSTER, {}).items() if n in wanted}
    endpoints: dict[str, Any] = {n: r for n, r in state.shared.get(ENDPOINT, {}).items() if n in wanted}
    clusters.update(own.get(CLUSTER, {}))
    return Snapshot.build({CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: dict(own.get(LISTENER, {}))})


def _draining(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Dataplane with every inbound marked not ready, so it drops out of every endpoint list."""
    out = dict(doc)
    net = dict(out.get("networking") or {})
    net["inbound"] = [{**ib, "health": {"ready": False}} for ib in net.get("inbound") or []]
    out["networking"] = net
    return out


class XdsSync:
    def __init__(self, store: ResourceStore, cache: Any, *, debounce: float = 0.02) -> None:
        self.store = store
        self.cache = cache
        self.debounce = debounce
        self.connected: dict[str, tuple[str, str]] = {}  # node id -> (mesh, name)
        self.leaving: set[tuple[str, str]] = set()  # draining proxies: no new traffic is sent to them
        self.states: dict[str, MeshState] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.generations = 0
        self.last_duration = 0.0

    # ---- connections ---------------------------------------------------------------------------------------

    def set_leaving(self, mesh: str, name: str, leaving: bool) -> None:
        if leaving == ((mesh, name) in self.leaving):
            return
        (self.leaving.add if leaving else self.leaving.discard)((mesh, name))
        self.mark(mesh)

    async def on_connect(self, mesh: str, name: str) -> None:
        self.connected[node_id(mesh, name)] = (mesh, name)
        state = self.states.get(mesh) or await self._rebuild(mesh)
        if state is not None:
            await self._publish(state, [node_id(mesh, name)])

    def on_disconnect(self, mesh: str, name: str) -> None:
        self.connected.pop(node_id(mesh, name), None)

    def warnings(self, mesh: str, name: str) -> list[str]:
        state = self.states.get(mesh)
        dp = state.by_name.get(name) if state else None
        return proxy_warnings(state.ctx, dp) if state and dp else []

    # ---- change loop ---------------------------------------------------------------------------------------

    def mark(self, mesh: str) -> None:
        self._dirty.add(mesh)
        self._wake.set()

    async def run(self) -> None:
        """Consume store events forever; rebuild touched meshes at most once per debounce window."""
        pump = asyncio.create_task(self._pump(), name="xds-store-events")
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.debounce)
                self._wake.clear()
                dirty, self._dirty = self._dirty, set()
                for mesh in sorted(dirty):
                    try:
                        state = await self._rebuild(mesh)
                    except Exception:
                        log.exception("generating config for mesh %s failed; proxies keep their last config", mesh)
                        continue
                    targets = [n for n, (m, _) in self.connected.items() if m == mesh]
                    if state is None:
                        for n in targets:
                            self.cache.clear(n)
                    else:
                        await self._publish(state, targets)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self) -> None:
        sub = await self.store.subscribe()
        while True:
            try:
                async for ev in sub:
                    self._on_event(ev)
            except SubscriptionOverflow:
                sub.resync()
                for mesh in {m for m, _ in self.connected.values()} | set(self.states):
                    self.mark(mesh)

    def _on_event(self, ev: ChangeEvent) -> None:
        if ev.kind not in CONFIG_KINDS:
            return
        self.mark(ev.name if ev.kind == "Mesh" else ev.mesh)

    async def _rebuild(self, mesh: str) -> MeshState | None:
        t0 = time.monotonic()
        mesh_rec = await self.store.get("Mesh", "", mesh)
        if mesh_rec is None:
            self.states.pop(mesh, None)
            return None
        dps = [_draining(r.doc) if (mesh, r.name) in self.leaving else r.doc
               for r in await self.store.list("Dataplane", mesh=mesh)]
        policies = {kind: [r.doc for r in await self.store.list(kind, mesh=mesh)] for kind in POLICY_PARSERS}
        state = await asyncio.to_thread(build_mesh_state, mesh_rec.doc, dps, policies)
        self.states[mesh] = state
        self.generations += 1
        self.last_duration = time.monotonic() - t0
        return state

    async def _publish(self, state: MeshState, targets: list[str]) -> None:
        """Generate the targets' snapshots off the loop, then hand them to the cache on the loop."""
        plan = [(n, state.by_name.get(self.connected.get(n, ("", ""))[1])) for n in targets]

        def build() -> list[tuple[str, Snapshot | None]]:
            out: list[tuple[str, Snapshot | None]] = []
            for n, dp in plan:
                try:
                    out.append((n, proxy_snapshot(state, dp) if dp else None))
                except Exception:
                    log.exception("generating config for %s failed; it keeps its last config", n)
            return out

        for n, snap in await asyncio.to_thread(build):
            if snap is None:
                self.cache.clear(n)
            elif self.cache.set_snapshot(n, snap):
                kv(log, logging.DEBUG, "new config", proxy=n)
