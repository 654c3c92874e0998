"""Pure matching: policies × dataplane → the policies that apply, least → most specific, plus from-rule helpers.

This is the one place that knows how targetRefs select proxies and peers, so no policy re-implements it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dpagent.controlplane.policies.base import TargetedPolicy
from dpagent.model.dataplane import Dataplane, Inbound
from dpagent.model.targetref import (
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TargetRef,
    selects,
    selects_inbound,
    sort_key,
    specificity,
    tags_match,
)

P = TypeVar("P", bound=TargetedPolicy)


def match(policies: Iterable[P], dp: Dataplane) -> list[P]:
    """Policies whose top-level targetRef selects `dp`, sorted least → most specific (ties by name)."""
    chosen = [p for p in policies if selects(p.target_ref, dp)]
    return sorted(chosen, key=lambda p: sort_key(p.target_ref, p.name))


def match_inbound(policies: Iterable[P], inbound: Inbound) -> list[P]:
    """Same as match() for one inbound, so a MeshService policy only shapes that service's listener."""
    chosen = [p for p in policies if selects_inbound(p.target_ref, inbound)]
    return sorted(chosen, key=lambda p: sort_key(p.target_ref, p.name))


@dataclass(frozen=True)
class PeerSet:
    """Services a from-targetRef stands for. `services is None` means every peer (kind Mesh)."""

    services: frozenset[str] | None
    warning: str = ""


def services_with_tags(tags: dict[str, str], dataplanes: Sequence[Dataplane],
                       service: str = "") -> frozenset[str]:
    out: set[str] = set()
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            if ib.service and (not service or ib.service == service) and tags_match(tags, ib.tags):
                out.add(ib.service)
    return frozenset(out)


def resolve_peers(ref: TargetRef, dataplanes: Sequence[Dataplane]) -> PeerSet:
    """Map a from-targetRef to peer identities.

    A peer proves only `spiffe://<mesh>/<service>` (one URI SAN), so tags cannot be checked on the wire: a
    MeshSubset / MeshServiceSubset becomes the set of services that have at least one dataplane carrying those
    tags. That widens the rule to every instance of those services, which the warning says out loud.
    """
    if ref.kind == MESH:
        return PeerSet(None)
    if ref.kind == MESH_SERVICE:
        return PeerSet(frozenset({ref.name}))
    if ref.kind in (MESH_SUBSET, MESH_SERVICE_SUBSET):
        found = services_with_tags(ref.tags, dataplanes, ref.name if ref.kind == MESH_SERVICE_SUBSET else "")
        if not found:
            return PeerSet(frozenset(), f"{ref.describe()} matches no dataplane in the mesh; the rule is ignored")
        return PeerSet(found, f"{ref.describe()} resolved to services [{', '.join(sorted(found))}]: peers are "
                              "identified only by kuma.io/service, so every instance of these services matches")
    return PeerSet(frozenset(), f"{ref.describe()}: unsupported targetRef kind; the rule is ignored")


@dataclass(frozen=True)
class FromEntry:
    """One `from[]` item of one matched policy, with its position for ordering."""

    target_ref: TargetRef
    conf: dict[str, Any]
    policy: str
    policy_index: int
    item_index: int


def order_from_entries(entries: Iterable[FromEntry]) -> list[FromEntry]:
    """Most specific from-targetRef first; for equal refs the later (more specific) policy first."""
    return sorted(entries, key=lambda e: (specificity(e.target_ref), e.policy_index, e.item_index), reverse=True)
