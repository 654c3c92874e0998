"""Turn store changes into per-proxy snapshots: debounced, and costing what a change touches.

Per mesh, the last rebuild's parsed inputs are kept; a change re-reads only the records its events name, keeps
everything derived from the dataplanes when only policies changed (`MeshContext.with_policies`), and regenerates
only the proxies the change can reach (`reach.py`). The shared part of a mesh (each service's cluster and
endpoints) is generated and serialised once (`Resource`), and every proxy's snapshot references those objects.
Generation runs in a worker thread so ADS streams keep flowing while many proxies are rebuilt; proxies that
connect together are generated in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dpagent.controlplane import datasource, secret_resources
from dpagent.controlplane.datasource import uses_secrets
from dpagent.controlplane.identity import leaf_expiry
from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.store import ChangeEvent, ResourceStore, StoreUnavailable, SubscriptionOverflow
from dpagent.controlplane.xds import reach
from dpagent.controlplane.xds import vips as vip
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.generators.outbound import service_protocols
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.nodeid import node_id
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resource, Snapshot
from dpagent.errors import Conflict
from dpagent.log import kv
from dpagent.model.dataplane import Dataplane, decode_dataplane
from dpagent.model.mesh import Mesh, decode_mesh, mtls_enabled

log = logging.getLogger("dpagent.cp.sync")

# Kinds whose changes alter Envoy config. Insights and the CP's own secrets do not (certificates travel as files on
# the host); user Secrets do, through data sources (see `_on_event`).
# VirtualIPs must stay out: sync writes it itself during a rebuild, and an event for it would trigger another.
# Policy kinds come from the registry, so a registered kind cannot be stored and then silently never reach Envoy.
CONFIG_KINDS = frozenset({"Mesh", "Dataplane", *POLICY_KINDS})
INSIGHT = "DataplaneInsight"
# Types every snapshot carries, empty or not: an empty type is an answer Envoy needs to finish initialising.
SNAPSHOT_TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)


@dataclasses.dataclass(frozen=True)
class MeshState:
    ctx: MeshContext
    by_name: Mapping[str, Dataplane]
    bundle_backends: tuple[str, ...] = ()
    # Proxies this state was built with as draining. The live draining set can drop a proxy (its departure record
    # deleted after deregistration) a moment before the state without its Dataplane is in place; readers that list
    # proxies (scrape targets) check both, so a departed proxy never comes back in between.
    leaving: frozenset[str] = frozenset()

    @property
    def shared(self) -> Mapping[str, Mapping[str, Resource]]:
        return self.ctx.shared_resources


DataplaneEntry = tuple[dict[str, Any], bool, Dataplane]  # (stored doc, draining, parsed)


@dataclasses.dataclass
class MeshInputs:
    """What the last rebuild of a mesh read, parsed and versioned, so the next change re-reads and re-parses only
    the records its events name."""

    mesh_doc: dict[str, Any]
    # Keyed by the stored document itself, not its version: a record deleted and created again within one
    # debounce window comes back with the same version number and other content.
    dataplanes: dict[str, DataplaneEntry]
    policies: dict[str, dict[str, tuple[dict[str, Any], Policy]]]  # kind → name → (stored doc, parsed)
    bundle_pem: str = ""
    bundle_backends: tuple[str, ...] = ()

    def parsed_policies(self) -> dict[str, list[Policy]]:
        return {kind: [p for _, (_, p) in sorted(by.items())] for kind, by in self.policies.items() if by}

    def parsed_dataplanes(self) -> list[Dataplane]:
        return [dp for _, (_, _, dp) in sorted(self.dataplanes.items())]


def build_mesh_state(mesh_doc: dict[str, Any], dp_docs: list[dict[str, Any]],
                     policy_docs: dict[str, list[dict[str, Any]]], trust_bundle: str = "",
                     bundle_backends: tuple[str, ...] = (), vips: Mapping[str, str] | None = None,
                     vip_cidr: str = vip.DEFAULT_CIDR) -> MeshState:
    """Pure: parse, then generate and serialise the shared part once (the context caches it).

    `vips` are the stored allocations; the state's `ctx.vips` is them made current (new services get addresses,
    gone ones lose theirs), which the caller persists when it differs.
    """
    inputs = MeshInputs(
        mesh_doc, {d["name"]: (d, False, decode_dataplane(d)) for d in dp_docs},
        {kind: {d["name"]: (d, POLICY_KINDS[kind].parse(d)) for d in docs}
         for kind, docs in policy_docs.items() if kind in POLICY_KINDS},
        trust_bundle, bundle_backends)
    return state_from_inputs(inputs, vips, vip_cidr)


def state_from_inputs(inputs: MeshInputs, vips: Mapping[str, str] | None, vip_cidr: str) -> MeshState:
    dps = inputs.parsed_dataplanes()
    mesh = decode_mesh(inputs.mesh_doc)
    ctx = MeshContext(mesh, dps, inputs.parsed_policies(), trust_bundle=inputs.bundle_pem,
                      vips=_allocate(mesh.name, dict(vips or {}), service_protocols(dps), vip_cidr))
    _ = ctx.shared_resources  # built here, in the worker thread, not by the first proxy's snapshot
    leaving = frozenset(name for name, (_, draining, _) in inputs.dataplanes.items() if draining)
    return MeshState(ctx, {d.name: d for d in dps}, inputs.bundle_backends, leaving)


def _allocate(mesh: str, existing: dict[str, str], services: Mapping[str, str], cidr: str) -> dict[str, str]:
    """VIPs for the mesh's services; a full range keeps the services that already have one working (and says so)
    instead of failing the whole mesh's config."""
    try:
        return vip.allocate(existing, services, cidr)
    except vip.VipRangeExhausted as e:
        log.error("mesh %s: %s; services without a VIP get no DNS name", mesh, e)
        try:
            return vip.allocate(existing, [s for s in services if s in existing], cidr)
        except vip.VipRangeExhausted:
            return {}


def proxy_snapshot(state: MeshState, dp: Dataplane) -> Snapshot:
    """The proxy's resources from the generator profile; shared ones go in as their already-serialised Resource."""
    resources = generate(state.ctx, dp).for_snapshot()
    for type_url in SNAPSHOT_TYPES:
        resources.setdefault(type_url, {})
    return Snapshot.build(resources)


def _draining(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Dataplane with every inbound marked not ready, so it drops out of every endpoint list."""
    out = dict(doc)
    net = dict(out.get("networking") or {})
    net["inbound"] = [{**ib, "health": {"ready": False}} for ib in net.get("inbound") or []]
    out["networking"] = net
    return out


BundleFn = Callable[[Mesh], Awaitable[tuple[str, tuple[str, ...]]]]


Changes = set[tuple[str, str]] | None  # (kind, name) of the records that changed; None: re-read the whole mesh
CONNECT_BATCH = 256  # proxies generated per worker-thread call when many connect at once


class XdsSync:
    def __init__(self, store: ResourceStore, cache: Any, *, debounce: float = 0.02,
                 bundle: BundleFn | None = None, bundle_recheck: float = 5.0,
                 vip_cidr: str = vip.DEFAULT_CIDR,
                 on_insight: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.on_insight = on_insight  # told which leaf records changed before bundles are re-checked
        self._insights: set[tuple[str, str]] = set()
        self.vip_cidr = vip_cidr
        self.cache = cache
        self.bundle = bundle
        self.bundle_recheck = bundle_recheck
        self._bundle_check: set[str] = set()
        self.debounce = debounce
        self.connected: dict[str, tuple[str, str]] = {}  # node id -> (mesh, name)
        self._ready: set[str] = set()  # meshes whose proxies all hold mesh certificates (see _mtls_ready)
        self.leaving: set[tuple[str, str]] = set()  # draining proxies: no new traffic is sent to them
        self.states: dict[str, MeshState] = {}
        self._inputs: dict[str, MeshInputs] = {}
        # One in-flight rebuild per mesh that connecting proxies share: when 1,000 proxies connect to a CP with no
        # state yet, each would otherwise start its own full rebuild (list + parse + generate the whole mesh).
        self._building: dict[str, asyncio.Future[MeshState | None]] = {}
        # Rebuilds of one mesh can overlap (a connect and a store change); only a rebuild that read the store later
        # than the state in place may replace it, so a slow, older rebuild never reinstates stale config.
        self._started = itertools.count(1)
        self._installed: dict[str, int] = {}
        self._sent_seq: dict[str, int] = {}  # node id -> sequence of the installed state its last config came from
        self._dirty: dict[str, Changes] = {}
        self._wake = asyncio.Event()
        # Proxies that connected and wait for their first snapshot, generated together (see _connect_batches).
        self._connecting: dict[str, asyncio.Future[None]] = {}
        self._batcher: asyncio.Task[None] | None = None
        self.generations = 0
        self.last_duration = 0.0
        self.last_reach = 0  # proxies the last change was generated for (tests, `inspect`)

    # ---- connections ---------------------------------------------------------------------------------------

    def set_leaving(self, mesh: str, name: str, leaving: bool) -> None:
        if leaving == ((mesh, name) in self.leaving):
            return
        (self.leaving.add if leaving else self.leaving.discard)((mesh, name))
        self.mark(mesh, "Dataplane", name)

    async def on_connect(self, mesh: str, name: str) -> None:
        node = node_id(mesh, name)
        self.connected[node] = (mesh, name)
        state = self.states.get(mesh) or await self._shared_rebuild(mesh)
        if state is None:
            return
        fut = self._connecting.get(node)
        if fut is None or fut.done():
            fut = self._connecting[node] = asyncio.get_running_loop().create_future()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._connect_batches(), name="xds-connect-batches")
        await asyncio.shield(fut)

    async def _connect_batches(self) -> None:
        """Generate the first snapshots of connecting proxies, up to CONNECT_BATCH per worker call. One thread hop
        per batch instead of per proxy, and one batch at a time: when thousands connect at once the event loop keeps
        serving streams (and the proxies behind them stay inside their handshake and first-message deadlines)
        instead of queueing thousands of generation jobs."""
        while self._connecting:
            nodes = list(itertools.islice(self._connecting, CONNECT_BATCH))
            futures = [self._connecting.pop(n) for n in nodes]
            by_mesh: dict[str, list[str]] = {}
            for n in nodes:
                if n in self.connected:
                    by_mesh.setdefault(self.connected[n][0], []).append(n)
            failure: Exception | None = None
            try:
                for mesh, targets in by_mesh.items():
                    state = self.states.get(mesh)
                    if state is not None:
                        await self._publish(state, targets)
            except Exception as e:
                # Logged, and the batch's streams fail (UNAVAILABLE, so their proxies reconnect) while the batcher
                # goes on: a batcher that died here left every proxy queued behind this batch waiting for a first
                # snapshot no task would make, and nobody saw why.
                log.exception("first config for %d connecting proxies failed; their streams are closed", len(nodes))
                failure = e
            finally:
                for f in futures:
                    if not f.done():
                        if failure is None:
                            f.set_result(None)
                        else:
                            f.set_exception(RuntimeError(f"first config failed: {failure}"))

    async def _shared_rebuild(self, mesh: str) -> MeshState | None:
        """Join the mesh's in-flight connect-time rebuild, or start one that later connects can join."""
        fut = self._building.get(mesh)
        if fut is None:
            fut = self._building[mesh] = asyncio.ensure_future(self._rebuild(mesh))
            fut.add_done_callback(lambda f: self._building.pop(mesh, None) if self._building.get(mesh) is f else None)
        return await asyncio.shield(fut)

    async def state(self, mesh: str) -> MeshState | None:
        """The mesh's current state, built now if no proxy has needed it yet (for `inspect`)."""
        return self.states.get(mesh) or await self._shared_rebuild(mesh)

    def on_disconnect(self, mesh: str, name: str) -> None:
        node = node_id(mesh, name)
        self.connected.pop(node, None)
        self._sent_seq.pop(node, None)

    # ---- change loop ---------------------------------------------------------------------------------------

    def mark(self, mesh: str, kind: str | None = None, name: str = "") -> None:
        """Note a change: of one record (kind, name), or of anything in the mesh (kind None: re-read it all)."""
        if kind is None:
            self._dirty[mesh] = None
        else:
            changes = self._dirty.setdefault(mesh, set())
            if changes is not None:
                changes.add((kind, name))
        self._wake.set()

    async def run(self) -> None:
        """Consume store events forever; rebuild touched meshes at most once per debounce window."""
        pump = asyncio.create_task(self._pump(), name="xds-store-events")
        pump.add_done_callback(lambda _: self._wake.set())  # a dead pump must stop the loop, not idle it
        try:
            while True:
                if pump.done():
                    pump.result()  # re-raise the pump's failure so the supervisor logs and restarts us
                    raise RuntimeError("the store event pump stopped")
                try:
                    await asyncio.wait_for(self._wake.wait(), self.bundle_recheck)
                except TimeoutError:
                    self._bundle_check.update(self.states)  # leaves expire with time, not only with events
                await asyncio.sleep(self.debounce)
                self._wake.clear()
                if pump.done():
                    continue
                await self._check_bundles()
                dirty, self._dirty = self._dirty, {}
                for mesh in sorted(dirty):
                    try:
                        state, reached = await self._change(mesh, dirty[mesh])
                    except StoreUnavailable as e:
                        # The store's listener resyncs everyone once the database is back; no traceback per mesh.
                        log.warning("mesh %s: the store is unreachable; proxies keep their last config (%s)", mesh, e)
                        continue
                    except Exception:
                        log.exception("generating config for mesh %s failed; proxies keep their last config", mesh)
                        continue
                    targets = [n for n, (m, name) in self.connected.items()
                               if m == mesh and (reached is None or name in reached)]
                    self.last_reach = len(targets)
                    if state is None:
                        for n in targets:
                            self.cache.clear(n)
                    elif targets:
                        await self._publish(state, targets)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    def resync(self) -> None:
        """Rebuild every known mesh: after a restart of run() events may have been missed."""
        for mesh in {m for m, _ in self.connected.values()} | set(self.states):
            self.mark(mesh)

    async def _pump(self) -> None:
        sub = await self.store.subscribe()
        while True:
            try:
                async for ev in sub:
                    self._on_event(ev)
            except SubscriptionOverflow:
                sub.resync()
                self.resync()

    def _on_event(self, ev: ChangeEvent) -> None:
        if ev.kind == INSIGHT:
            self._bundle_check.add(ev.mesh)  # a leaf from another root may retire (or revive) a root
            self._insights.add((ev.mesh, ev.name))
            self._wake.set()
            return
        if ev.kind == "Secret" and not secret_resources.is_system(ev.name):
            # A user Secret feeds config through `{secret: name}` data sources (a provided CA, TLS material): rare
            # enough that re-reading the whole mesh, CA material included, is the simple right answer.
            self.mark(ev.mesh)
            return
        if ev.kind not in CONFIG_KINDS:
            return
        if ev.kind == "Mesh":
            self.mark(ev.name)
        else:
            self.mark(ev.mesh, ev.kind, ev.name)

    async def _check_bundles(self) -> None:
        """Rebuild a mesh whose trust bundle changed membership (a root added by a leaf or retired by expiry)."""
        insights, self._insights = self._insights, set()
        if self.on_insight is not None:
            for mesh, name in sorted(insights):
                try:
                    await self.on_insight(mesh, name)
                except Exception:
                    log.exception("mesh %s: re-reading the leaf record of %s failed", mesh, name)
        checks, self._bundle_check = self._bundle_check - {m for m, c in self._dirty.items() if c is None}, set()
        for mesh in checks:
            state = self.states.get(mesh)
            if state is None or self.bundle is None or not mtls_enabled(state.ctx.mesh):
                continue
            _, names = await self.bundle(state.ctx.mesh)
            if names != state.bundle_backends or (state.ctx.mesh.mtls_staging and await self._mtls_ready(mesh, names)):
                self._dirty[mesh] = None

    async def _mtls_ready(self, mesh: str, backends: tuple[str, ...]) -> bool:
        """mTLS was turned on: true once every connected proxy of the mesh holds an unexpired leaf from one of the
        mesh's roots (agents that started with mTLS off hold a local placeholder until they ask). Until then the
        mesh is generated in staging (`Mesh.mtls_staging`): inbounds accept both, clients stay plaintext. Sticky
        while mTLS stays on: a proxy joining later gets its certificate before its Envoy starts, and a CA rotation
        keeps calling over mTLS."""
        if mesh in self._ready:
            return True
        wanted = {name for m, name in self.connected.values() if m == mesh}
        now = time.time()
        for rec in await self.store.list(INSIGHT, mesh=mesh):
            mtls = rec.doc.get("mTLS") or {}
            if mtls.get("issuedBackend") in backends and leaf_expiry(rec.doc) > now:
                wanted.discard(rec.name)
        if wanted:
            return False
        self._ready.add(mesh)
        return True

    def issuable(self, mesh: str, backend: str) -> bool:
        """True once every connected proxy of the mesh has ACKed a trust bundle that contains `backend`'s root:
        only then may leaves from that root be handed out without a peer rejecting them."""
        state = self.states.get(mesh)
        if state is None:
            return True
        if backend not in state.bundle_backends:
            return False
        for node, (m, _) in list(self.connected.items()):
            if m != mesh:
                continue
            status = (self.cache.status(node) or {}).get("types", {}).get(SECRET)
            if not status or not status.get("acked_version") or \
                    status.get("acked_version") != status.get("snapshot_version"):
                return False
        return True

    # ---- rebuilding ----------------------------------------------------------------------------------------

    async def _change(self, mesh: str, changes: Changes) -> tuple[MeshState | None, reach.Reach]:
        """Apply one debounce window's changes to a mesh: (new state, the proxies it can reach)."""
        if changes is None or mesh not in self.states or mesh not in self._inputs:
            return await self._rebuild(mesh), None
        return await self._apply(mesh, changes)

    def _dataplane_entry(self, mesh: str, name: str, doc: dict[str, Any],
                         known: DataplaneEntry | None) -> DataplaneEntry:
        """The parsed Dataplane for this stored doc, re-parsed only when it (or its draining mark) changed."""
        leaving = (mesh, name) in self.leaving
        if known is not None and known[1] == leaving and known[0] == doc:
            return known
        return doc, leaving, decode_dataplane(_draining(doc) if leaving else doc)

    async def _rebuild(self, mesh: str) -> MeshState | None:
        """Re-read the whole mesh (first use, a Mesh change, a trust bundle change, missed events)."""
        t0 = time.monotonic()
        seq = next(self._started)
        mesh_rec = await self.store.get("Mesh", "", mesh)
        if mesh_rec is None:
            if seq > self._installed.get(mesh, 0):
                self._installed[mesh] = seq
                self.states.pop(mesh, None)
                self._inputs.pop(mesh, None)
            return self.states.get(mesh)
        old = self._inputs.get(mesh)
        dataplanes = {r.name: self._dataplane_entry(mesh, r.name, r.doc,
                                                    old.dataplanes.get(r.name) if old else None)
                      for r in await self.store.list("Dataplane", mesh=mesh)}
        policies: dict[str, dict[str, tuple[dict[str, Any], Policy]]] = {}
        for kind in POLICY_KINDS:
            known = old.policies.get(kind, {}) if old else {}
            by: dict[str, tuple[dict[str, Any], Policy]] = {}
            for r in await self.store.list(kind, mesh=mesh):
                hit = known.get(r.name)
                # a resource naming Secrets is parsed again: this rebuild may be for a change of one of them
                by[r.name] = hit if hit is not None and hit[0] == r.doc and not uses_secrets(r.doc) \
                    else (r.doc, await self._parse(kind, mesh, r.doc))
            policies[kind] = by
        bundle_pem, bundle_names = "", ()
        parsed_mesh = decode_mesh(mesh_rec.doc)
        mesh_doc = mesh_rec.doc
        if self.bundle is not None and mtls_enabled(parsed_mesh):
            bundle_pem, bundle_names = await self.bundle(parsed_mesh)
            if not await self._mtls_ready(mesh, bundle_names):
                mesh_doc = {**mesh_doc, "mtlsStaging": True}
        else:
            self._ready.discard(mesh)
        inputs = MeshInputs(mesh_doc, dataplanes, policies, bundle_pem, bundle_names)
        vips_rec = await self.store.get(vip.KIND, mesh, vip.NAME)
        stored_vips = vip.vips_from_doc(vips_rec.doc if vips_rec else None)
        state = await asyncio.to_thread(state_from_inputs, inputs, stored_vips, self.vip_cidr)
        if not self._install(mesh, seq, state, inputs, t0):
            return self.states.get(mesh)  # a rebuild that read the store later already installed its state
        await self._store_vips(mesh, state, vips_rec, stored_vips)
        return state

    async def _parse(self, kind: str, mesh: str, doc: dict[str, Any]) -> Policy:
        """Parse with the mesh's Secrets that the document names put in place (a MeshExternalService's CA from
        `{secret: name}`): plugins parse without store access."""
        if uses_secrets(doc):
            names = {name for _, name in datasource.secret_refs(doc.get("spec"))}
            doc = datasource.inline_secrets(doc, await datasource.fetch_secrets(self.store, mesh, names))
        return POLICY_KINDS[kind].parse(doc)

    async def _apply(self, mesh: str, changes: set[tuple[str, str]]) -> tuple[MeshState | None, reach.Reach]:
        """Re-read only the changed records; keep what the dataplanes determine when only policies changed."""
        t0 = time.monotonic()
        seq = next(self._started)
        old_state, old = self.states[mesh], self._inputs[mesh]
        dataplanes = dict(old.dataplanes)
        policies = {kind: dict(by) for kind, by in old.policies.items()}
        changed_dps: set[str] = set()
        reaches: list[reach.Reach] = []
        old_ctx = old_state.ctx
        new_policies: list[Policy] = []
        for kind, name in sorted(changes):
            rec = await self.store.get(kind, mesh, name)
            if kind == "Dataplane":
                before = dataplanes.get(name)
                if rec is None:
                    if dataplanes.pop(name, None) is not None:
                        changed_dps.add(name)
                    continue
                entry = self._dataplane_entry(mesh, name, rec.doc, before)
                if entry is not before:
                    dataplanes[name] = entry
                    changed_dps.add(name)
                continue
            if kind not in POLICY_KINDS:
                continue
            by = policies.setdefault(kind, {})
            prior = by.get(name)
            if rec is None:
                if by.pop(name, None) is not None and prior is not None:
                    reaches.append(reach.policy_reach(old_ctx, prior[1]))
                continue
            if prior is not None and prior[0] == rec.doc:
                continue
            parsed = await self._parse(kind, mesh, rec.doc)
            by[name] = (rec.doc, parsed)
            new_policies.append(parsed)
            if prior is not None:
                reaches.append(reach.policy_reach(old_ctx, prior[1]))
        if not changed_dps and not reaches and not new_policies:
            return old_state, frozenset()
        inputs = MeshInputs(old.mesh_doc, dataplanes, policies, old.bundle_pem, old.bundle_backends)
        vips_rec, stored_vips = None, dict(old_ctx.vips)
        if changed_dps:
            vips_rec = await self.store.get(vip.KIND, mesh, vip.NAME)
            stored_vips = vip.vips_from_doc(vips_rec.doc if vips_rec else None)
            state = await asyncio.to_thread(state_from_inputs, inputs, stored_vips, self.vip_cidr)
            reaches.append(reach.dataplane_reach(old_ctx, state.ctx, changed_dps))
        else:
            kinds = frozenset(kind for kind, _ in changes)
            state = MeshState(old_ctx.with_policies(inputs.parsed_policies(), kinds), old_state.by_name,
                              old_state.bundle_backends, old_state.leaving)
        reaches.extend(reach.policy_reach(state.ctx, p) for p in new_policies)
        if not self._install(mesh, seq, state, inputs, t0):
            return self.states.get(mesh), None
        if changed_dps:
            await self._store_vips(mesh, state, vips_rec, stored_vips)
        return state, reach.union(reaches)

    def _install(self, mesh: str, seq: int, state: MeshState, inputs: MeshInputs, t0: float) -> bool:
        if seq < self._installed.get(mesh, 0):
            return False
        self._installed[mesh] = seq
        self.states[mesh] = state
        self._inputs[mesh] = inputs
        self.generations += 1
        self.last_duration = time.monotonic() - t0
        return True

    async def _store_vips(self, mesh: str, state: MeshState, vips_rec: Any, stored: Mapping[str, str]) -> None:
        if dict(state.ctx.vips) == dict(stored):
            return
        try:
            # Compare-and-swap on what this rebuild read: another replica that stored first keeps its
            # addresses, and this mesh is rebuilt from them (an upsert would hand one VIP to two services).
            doc = vip.vips_doc(mesh, state.ctx.vips)
            if vips_rec is None:
                await self.store.create(vip.KIND, mesh, vip.NAME, doc)
            else:
                await self.store.update(vip.KIND, mesh, vip.NAME, doc, version=vips_rec.version)
        except Conflict:
            self.mark(mesh)
        except Exception:
            log.exception("mesh %s: storing virtual IPs failed; they are re-allocated on the next rebuild", mesh)

    async def _publish(self, state: MeshState, targets: list[str]) -> None:
        """Generate the targets' snapshots off the loop, then hand them to the cache on the loop.

        Publishes overlap (a connecting proxy's first config and a store change's push are built in worker threads
        at the same time), so each node remembers which installed state its config came from, and a build that
        finishes after a newer one never replaces it: a first config built before a new service registered,
        landing after the push that added it, left a proxy without that service until some later change."""
        mesh = state.ctx.mesh.name
        current = self.states.get(mesh)
        seq = 0  # a state of a mesh no longer installed: never replaces what a node has
        if current is not None:
            state, seq = current, self._installed.get(mesh, 0)  # a newer state in place is handed out instead
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
            if seq < self._sent_seq.get(n, 0):
                continue  # a newer state's config reached this node while this one was being built
            self._sent_seq[n] = seq
            if snap is None:
                self.cache.clear(n)
            elif self.cache.set_snapshot(n, snap):
                kv(log, logging.DEBUG, "new config", proxy=n)
