"""Pure, generic matching: the policies of one kind × one dataplane → what applies, in Kuma's priority order, per
inbound (`from[]`, `rules[]`) and per destination (`to[]`), plus the merged confs (reference kuma-policies.md
§1.4-1.6). This is the one place that knows how targetRefs select proxies and peers; plugins receive its output.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.targetref import (
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TargetRef,
    destination_of,
    selects,
    selects_inbound,
    selects_sidecars,
    sort_key,
    specificity,
    tags_match,
)
from dpagent.model.dataplane import Dataplane, Inbound


def inbound_key(dp: Dataplane, inbound: Inbound) -> str:
    """`address:port`: how rules, `inspect` and generators name one inbound."""
    return f"{inbound.address or dp.networking.address}:{inbound.port}"


@dataclass(frozen=True)
class Item:
    """One `to[]`/`from[]`/`rules[]` entry of one matched policy. `rank` is the policy's place in priority order
    (higher wins), `index` its place in its section."""

    policy: str
    rank: int
    index: int
    conf: Mapping[str, Any]
    target_ref: TargetRef | None = None


@dataclass(frozen=True)
class InboundMatch:
    """The policies that selected one inbound (lowest priority first) and their inbound entries in that order."""

    key: str
    policies: tuple[str, ...] = ()
    from_: tuple[Item, ...] = ()
    rules: tuple[Item, ...] = ()

    def rules_conf(self) -> dict[str, Any]:
        """Every catch-all rule merged, lowest priority first (Kuma's MatchesAllIncomingTraffic)."""
        return merge_confs(i.conf for i in self.rules)


class ToIndex:
    """The `to[]` items of one selection of policies, indexed by destination. Shared by every proxy selected by the
    same policies (see `match`), so finding a destination's items is a lookup, not a scan of every item: with a
    per-service override per kind for hundreds of services, scanning was most of a proxy's generation time."""

    __slots__ = ("_confs", "_derived", "_general", "_named", "_services", "items", "key")

    def __init__(self, items: tuple[Item, ...]) -> None:
        self.items = items
        self.key: tuple[tuple[str, int], ...] = tuple((i.policy, i.index) for i in items)  # memo key of the set
        self._general: list[int] = []
        self._named: dict[str, list[int]] = {}
        for pos, i in enumerate(items):
            ref = i.target_ref
            if ref is None:
                continue
            if ref.kind == MESH:
                self._general.append(pos)
                continue
            destination = destination_of(ref)
            if destination is not None:
                self._named.setdefault(destination, []).append(pos)
        self._services: dict[str, tuple[Item, ...]] = {}
        self._confs: dict[str, dict[str, Any]] = {}
        self._derived: dict[tuple[str, str], Any] = {}

    def for_service(self, service: str) -> tuple[Item, ...]:
        """Items that concern `service`, lowest priority first: Mesh, or a MeshService / MeshExternalService naming
        it (`service` is the destination key, targetref.destination_of)."""
        hit = self._services.get(service)
        if hit is None:
            named = self._named.get(service, ())
            positions = sorted((*self._general, *named)) if named else self._general
            hit = self._services[service] = tuple(self.items[p] for p in positions)
        return hit

    def conf(self, service: str) -> dict[str, Any]:
        """The merged conf toward `service`; shared, so callers must not modify it."""
        hit = self._confs.get(service)
        if hit is None:
            hit = self._confs[service] = merge_confs(i.conf for i in self.for_service(service))
        return hit

    def derived(self, tag: str, service: str, build: Callable[[], Any]) -> Any:
        """A plugin's value computed from `service`'s items (e.g. its typed effective conf), once per selection and
        destination instead of once per proxy; `tag` names the plugin and the value."""
        try:
            return self._derived[(tag, service)]
        except KeyError:
            value = self._derived[(tag, service)] = build()
            return value


_NO_ITEMS = ToIndex(())


@dataclass(frozen=True)
class Matched:
    """One kind's policies for one proxy. `inbounds` is keyed by inbound_key()."""

    kind: str
    policies: tuple[str, ...] = ()
    to: tuple[Item, ...] = ()
    default: Mapping[str, Any] = field(default_factory=dict)
    inbounds: Mapping[str, InboundMatch] = field(default_factory=dict)
    index: ToIndex | None = None

    @property
    def to_index(self) -> ToIndex:
        if self.index is not None:
            return self.index
        return ToIndex(self.to) if self.to else _NO_ITEMS

    def to_items(self, service: str) -> list[Item]:
        """The `to[]` entries that concern `service`, lowest priority first: Mesh, or MeshService with its name."""
        return list(self.to_index.for_service(service))

    def to_conf(self, service: str) -> dict[str, Any]:
        return dict(self.to_index.conf(service))


def _ordered(policies: Iterable[Policy]) -> list[Policy]:
    return sorted(policies, key=lambda p: sort_key(p.target_ref, p.name, p.labels))


def _sorted_outbound(chosen: list[Policy]) -> tuple[Item, ...]:
    # to[] order (§1.5): the policy's own keys, then the to-targetRef's kind, and only then the policy name.
    keys = {p.name: sort_key(p.target_ref, p.name, p.labels) for p in chosen}
    return tuple(sorted((Item(p.name, rank, i, e.conf, e.target_ref) for rank, p in enumerate(chosen)
                         for i, e in enumerate(p.to)),
                        key=lambda it: (*keys[it.policy][:-1], specificity(it.target_ref or TargetRef()),
                                        keys[it.policy][-1], it.index)))


Selection = tuple[list[Policy], ToIndex, dict[str, Any], list[Policy]]
_SelectIndex = tuple[tuple[int, ...], dict[str, tuple[int, ...]], tuple[int, ...]]


def _select_index(policies: Sequence[Policy]) -> _SelectIndex:
    """(indices a Mesh ref selects on every sidecar, MeshService/MeshServiceSubset indices by service name, the
    rest): a proxy then checks the policies that can select it instead of all of them."""
    everywhere: list[int] = []
    by_service: dict[str, list[int]] = {}
    rest: list[int] = []
    for i, p in enumerate(policies):
        ref = p.target_ref
        if ref.kind == MESH:
            if selects_sidecars(ref):  # a Mesh ref selects every sidecar or none: it never looks at the proxy
                everywhere.append(i)
        elif ref.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and ref.name:
            by_service.setdefault(ref.name, []).append(i)
        else:
            rest.append(i)
    return tuple(everywhere), {k: tuple(v) for k, v in by_service.items()}, tuple(rest)


def _selected(kind: str, policies: Sequence[Policy], dp: Dataplane,
              cache: MutableMapping[Hashable, Any] | None) -> tuple[int, ...]:
    index = cache.get(("select-index", kind)) if cache is not None else None
    if index is None:
        index = _select_index(policies)
        if cache is not None:
            cache[("select-index", kind)] = index
    everywhere, by_service, rest = index
    candidates = [i for svc in {ib.service for ib in dp.networking.inbound if ib.service}
                  for i in by_service.get(svc, ())]
    candidates.extend(rest)
    if not candidates:
        return everywhere
    return tuple(sorted({*everywhere, *(i for i in candidates if selects(policies[i].target_ref, dp))}))


def match(kind: str, policies: Iterable[Policy], dp: Dataplane,
          cache: MutableMapping[Hashable, Any] | None = None) -> Matched:
    """Select, sort and split one kind's policies for `dp`.

    `cache` (one per mesh snapshot, the same `policies` every call): proxies selected by the same policies share
    the sorted policies, their indexed `to[]` items and merged default, so a mesh-wide policy set is sorted once,
    not once per proxy (with 100 route policies that sorting was most of a proxy's generation time)."""
    policies = policies if isinstance(policies, Sequence) else list(policies)
    selected = _selected(kind, policies, dp, cache)
    key = (kind, selected)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        chosen = _ordered(policies[i] for i in selected)
        hit = (tuple(p.name for p in chosen), ToIndex(_sorted_outbound(chosen)),
               merge_confs(p.default for p in chosen if p.default is not None),
               [(n, p) for n, p in enumerate(chosen) if p.inbound], {})
        if cache is not None:
            cache[key] = hit
    names, to, default, inbound_chosen, entries = hit
    inbounds: dict[str, InboundMatch] = {}
    for ib in dp.networking.inbound:
        mine = tuple(n for n, p in inbound_chosen if selects_inbound(p.target_ref, ib, dp))
        parts = entries.get(mine)
        if parts is None:  # the same policies on another proxy's inbound: the same entries
            picked = [p for n, p in inbound_chosen if n in mine]
            parts = entries[mine] = (
                tuple(p.name for p in picked),
                tuple(Item(p.name, r, i, e.conf, e.target_ref) for r, p in enumerate(picked)
                      for i, e in enumerate(p.from_)),
                tuple(Item(p.name, r, i, e.conf) for r, p in enumerate(picked) for i, e in enumerate(p.rules)))
        key_ = inbound_key(dp, ib)
        inbounds[key_] = InboundMatch(key=key_, policies=parts[0], from_=parts[1], rules=parts[2])
    return Matched(kind, names, to.items, default, inbounds, to)


# ---- peers of a from-targetRef ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSet:
    """Services a from-targetRef stands for. `services is None` means every peer (kind Mesh)."""

    services: frozenset[str] | None
    warning: str = ""


def services_with_tags(tags: Mapping[str, str], dataplanes: Sequence[Dataplane],
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


def from_by_specificity(items: Iterable[Item]) -> list[Item]:
    """Most specific from-targetRef first (kind, then how many tags narrow it); for equal refs the entry of the
    higher-priority policy first, so the first entry that covers a peer decides."""
    def key(it: Item) -> tuple[Any, ...]:
        ref = it.target_ref or TargetRef()
        return (*specificity(ref), len(ref.tags), it.rank, it.index)

    return sorted(items, key=key, reverse=True)
