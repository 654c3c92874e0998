"""Which proxies a change can reach: the dependency rules that let a change cost what it touches.

Kuma's policy model makes this decidable from the change itself. A policy only edits the config of the proxies its
top-level targetRef selects; a policy with only `to[]` entries naming services edits only their outbounds toward
those services. A dataplane's own document feeds its own config, and through endpoints the config of the proxies
that call its services. Everything else a proxy's config reads from other dataplanes (subset peer sets, zones,
service protocols, VIPs) is a function of the mesh's distinct (service, tags) pairs (`MeshContext.tag_shape`), so a
change of those reaches every proxy. `None` means "every proxy of the mesh". Over-approximating is safe (an
unchanged config is not pushed, snapshots are content-versioned); missing a proxy is not, and the sync tests check
every rule against a full rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable

from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.targetref import MESH, MESH_EXTERNAL_SERVICE, MESH_SERVICE, selects
from dpagent.controlplane.xds.context import MeshContext
from dpagent.model.dataplane import Dataplane

Reach = frozenset[str] | None  # dataplane names, or None for all of them


def union(reaches: Iterable[Reach]) -> Reach:
    out: set[str] = set()
    for r in reaches:
        if r is None:
            return None
        out |= r
    return frozenset(out)


def consumers(ctx: MeshContext, services: Iterable[str]) -> frozenset[str]:
    """Dataplanes that get any of `services`' clusters and endpoints."""
    by, everything = ctx.consumers
    out = set(everything)
    for s in services:
        out |= by.get(s, frozenset())
    return frozenset(out)


def selected(ctx: MeshContext, policy: Policy) -> Reach:
    """Dataplanes the policy's top-level targetRef selects."""
    ref = policy.target_ref
    if ref.kind == MESH:
        return None  # a Gateway-only Mesh ref selects no sidecar; over-approximating it costs one no-op rebuild
    names = ctx.by_service.get(ref.name, ()) if ref.kind == MESH_SERVICE else None
    by_name = _by_name(ctx)
    pool = [by_name[n] for n in names] if names is not None else ctx.dataplanes
    return frozenset(dp.name for dp in pool if selects(ref, dp))


def policy_reach(ctx: MeshContext, policy: Policy) -> Reach:
    """Proxies whose config this policy (one version of it) can edit."""
    if policy.kind == MESH_EXTERNAL_SERVICE:
        return None  # a destination every transparent proxy reaches (and outbounds may name): over-approximated
    chosen = selected(ctx, policy)
    if policy.inbound or policy.default is not None or not policy.to:
        return chosen
    services = set()
    for entry in policy.to:
        ref = entry.target_ref
        if ref is None or ref.kind != MESH_SERVICE:
            return chosen  # a Mesh-wide (or other kind of) destination: every outbound of the selected proxies
        services.add(ref.name)
    callers = consumers(ctx, services)
    return callers if chosen is None else chosen & callers


def dataplane_reach(old: MeshContext, new: MeshContext, changed: Iterable[str]) -> Reach:
    """Proxies a change of these dataplanes (added, updated, removed, draining) can reach, given the contexts
    before and after it."""
    changed = frozenset(changed)
    if old.tag_shape != new.tag_shape or dict(old.vips) != dict(new.vips):
        return None
    services: set[str] = set()
    for ctx in (old, new):
        by_name = _by_name(ctx)
        for name in changed:
            dp = by_name.get(name)
            if dp is not None:
                services |= {ib.service for ib in dp.networking.inbound if ib.service}
    return changed | consumers(old, services) | consumers(new, services) | direct_callers(old, services) \
        | direct_callers(new, services)


def direct_callers(ctx: MeshContext, services: Iterable[str]) -> frozenset[str]:
    """Dataplanes with direct-access listeners on these services' endpoints (`directAccessServices`, `*` = all)."""
    def index() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
        by: dict[str, set[str]] = {}
        for dp in ctx.dataplanes:
            tp = dp.networking.transparent_proxying
            for s in tp.direct_access_services if tp is not None else ():
                by.setdefault(s, set()).add(dp.name)
        return {s: frozenset(n) for s, n in by.items()}, frozenset(by.get("*", ()))

    by, everything = ctx.dp_memo(("reach", "direct-access"), index)
    out = set(everything)
    for s in services:
        out |= by.get(s, frozenset())
    return frozenset(out)


def _by_name(ctx: MeshContext) -> dict[str, Dataplane]:
    return ctx.dp_memo(("reach", "by-name"), lambda: {dp.name: dp for dp in ctx.dataplanes})  # type: ignore[no-any-return]

