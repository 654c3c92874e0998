"""targetRef for every policy: its kinds, per-kind validation, which dataplanes and inbounds it selects, and Kuma's
priority order (reference kuma-policies.md §1.2, §1.4, §1.5).

Selection is decided per inbound, because one dataplane can carry several services and a policy for one of them
must not leak onto the others; a dataplane is selected when any inbound is (or, for Mesh and Dataplane refs
without a sectionName, when the dataplane itself matches, so a client-only proxy still gets its outbound policies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.model.dataplane import SERVICE_TAG, Dataplane, Inbound
from dpagent.model.validation import Violations, join

MESH = "Mesh"
DATAPLANE = "Dataplane"
MESH_SUBSET = "MeshSubset"
MESH_SERVICE = "MeshService"
MESH_SERVICE_SUBSET = "MeshServiceSubset"
KINDS = (MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET)
# Kinds only route policies name (a gateway to attach to, destinations this CP cannot resolve yet); they select
# no dpagent proxy.
MESH_GATEWAY = "MeshGateway"
MESH_EXTERNAL_SERVICE = "MeshExternalService"
MESH_MULTI_ZONE_SERVICE = "MeshMultiZoneService"
MESH_HTTP_ROUTE = "MeshHTTPRoute"
# Kuma's kind rank (§1.5 step 1); the gaps are kinds this CP does not have (MeshGateway, MeshMultiZoneService, ...).
_RANK = {MESH: 1, DATAPLANE: 2, MESH_SUBSET: 3, MESH_SERVICE: 5, MESH_EXTERNAL_SERVICE: 6, MESH_SERVICE_SUBSET: 8}
# The destination key of a MeshExternalService: what its outbound resources carry as `service` and its cluster's
# name. The '/' keeps it apart from every `kuma.io/service` value a dataplane can declare (tag values have none).
EXTSVC_PREFIX = "extsvc/"


def extsvc_key(name: str) -> str:
    return f"{EXTSVC_PREFIX}{name}"


def is_external(service: str) -> bool:
    """Is this destination key a MeshExternalService's?"""
    return service.startswith(EXTSVC_PREFIX)


def destination_of(ref: TargetRef) -> str | None:
    """The destination (service key) a `to[]` targetRef names: a MeshService's `kuma.io/service`, a
    MeshExternalService's key; None for Mesh (every destination) and for kinds resolved elsewhere or not at all."""
    if ref.kind == MESH_SERVICE and ref.name:
        return ref.name
    if ref.kind == MESH_EXTERNAL_SERVICE and ref.name:
        return extsvc_key(ref.name)
    return None
PROXY_TYPES = ("Sidecar", "Gateway")
_FIELDS = ("kind", "name", "tags", "labels", "sectionName", "proxyTypes")


class TargetRef(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False, frozen=True):
    kind: str = MESH
    name: str = ""
    tags: dict[str, str] = {}
    labels: dict[str, str] = {}
    section_name: str = ""
    proxy_types: tuple[str, ...] = ()
    namespace: str = ""  # route kinds' refs (MeshService in another namespace); nothing selects by it yet

    def describe(self) -> str:
        """Short human form for warnings and `inspect`: `MeshService(web)`, `Dataplane{app=web}/main`."""
        sel = self.tags or self.labels
        pairs = ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
        return (self.kind + (f"({self.name})" if self.name else "") + (f"{{{pairs}}}" if pairs else "")
                + (f"/{self.section_name}" if self.section_name else ""))


def validate_target_ref(v: Violations, doc: Any, path: str, kinds: tuple[str, ...] = KINDS,
                        required: bool = True, inbound_policy: bool = False) -> None:
    """Record every problem with one targetRef: which fields each kind needs or forbids (§1.2).

    `inbound_policy`: the policy has `from`/`rules`, the only place a Dataplane `sectionName` means something.
    """
    ref = v.mapping(doc, path, required=required)
    if ref is None:
        return
    v.unknown(ref, _FIELDS, path)
    kind = ref.get("kind")
    if kind is None:
        v.add(join(path, "kind"), "must be defined")
        return
    if kind not in kinds:
        v.add(join(path, "kind"), f"value is not supported (expected one of: {', '.join(kinds)})")
        return

    def forbid(*fields: str) -> None:
        for f in fields:
            if ref.get(f) not in (None, "", {}, []):
                v.add(join(path, f), f"must not be set with kind {kind}")

    if kind in (MESH_SERVICE, MESH_SERVICE_SUBSET):
        v.string(ref.get("name"), join(path, "name"))
    if kind in (MESH_SUBSET, MESH_SERVICE_SUBSET):
        tags = v.tags(ref.get("tags"), join(path, "tags"), required_keys=())
        if tags is None or not tags:
            v.add(join(path, "tags"), f"must be set with kind {kind}")
    if kind == MESH:
        forbid("name", "tags", "labels", "sectionName")
    elif kind == DATAPLANE:
        forbid("tags", "proxyTypes")
        if ref.get("labels") not in (None, {}) and ref.get("name") not in (None, ""):
            v.add(join(path, "labels"), "must not be set together with name")
        if ref.get("name") not in (None, ""):
            v.name(ref.get("name"), join(path, "name"))
        v.tags(ref.get("labels"), join(path, "labels"))
        if ref.get("sectionName") not in (None, "") and not inbound_policy:
            v.add(join(path, "sectionName"), "can only be used in a policy with 'from' or 'rules'")
    elif kind == MESH_SUBSET:
        forbid("name", "labels", "sectionName", "proxyTypes")
    elif kind == MESH_SERVICE:
        forbid("tags", "labels", "proxyTypes")
    elif kind == MESH_SERVICE_SUBSET:
        forbid("labels", "sectionName", "proxyTypes")
    elif kind == MESH_EXTERNAL_SERVICE:
        forbid("tags", "proxyTypes", "sectionName")
        if ref.get("name") in (None, "") and ref.get("labels") in (None, {}):
            v.add(join(path, "name"), f"must be set with kind {kind} (or labels)")
        elif ref.get("name") not in (None, ""):
            v.string(ref.get("name"), join(path, "name"))
    if ref.get("sectionName") not in (None, ""):
        v.string(ref.get("sectionName"), join(path, "sectionName"))
    if "proxyTypes" in ref and kind in (MESH, MESH_SUBSET):
        validate_proxy_types(v, ref.get("proxyTypes"), join(path, "proxyTypes"))


def validate_proxy_types(v: Violations, raw: Any, path: str) -> None:
    """A Mesh or MeshSubset targetRef's `proxyTypes`: known types, and not an empty list, which would select no
    proxy at all where leaving the field out selects every one."""
    types = v.sequence(raw, path)
    if not types and isinstance(raw, list):
        v.add(path, "must not be empty (leave it out to mean every proxy type)")
    for i, t in enumerate(types):
        if t not in PROXY_TYPES:
            v.add(f"{path}[{i}]", f"must be one of: {', '.join(PROXY_TYPES)}")


def tags_match(ref_tags: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    return all(tags.get(k) == val for k, val in ref_tags.items())


def selects_sidecars(ref: TargetRef) -> bool:
    """A kind Mesh ref selects every sidecar, or (limited to Gateway proxies) none of them."""
    return ref.kind == MESH and _is_sidecar(ref)


def _is_sidecar(ref: TargetRef) -> bool:
    """Every dpagent proxy is a sidecar; a ref limited to Gateway proxies selects none of them."""
    return not ref.proxy_types or "Sidecar" in ref.proxy_types


def _dataplane_matches(ref: TargetRef, dp: Dataplane) -> bool:
    if ref.name and ref.name != dp.name:
        return False
    return tags_match(ref.labels, dp.labels)


def section_matches(section: str, inbound: Inbound) -> bool:
    """A sectionName names an inbound by its `name`, or by its port number when the inbound has no name."""
    return section == inbound.name if inbound.name else section == str(inbound.port)


def selects_inbound(ref: TargetRef, inbound: Inbound, dp: Dataplane | None = None) -> bool:
    if ref.kind == MESH:
        return _is_sidecar(ref)
    if ref.kind == DATAPLANE:
        if dp is not None and not _dataplane_matches(ref, dp):
            return False
        return not ref.section_name or section_matches(ref.section_name, inbound)
    if ref.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and inbound.tags.get(SERVICE_TAG) != ref.name:
        return False
    if ref.kind == MESH_SERVICE and ref.section_name:
        return section_matches(ref.section_name, inbound)
    if ref.kind in (MESH_SUBSET, MESH_SERVICE_SUBSET):
        return _is_sidecar(ref) and tags_match(ref.tags, inbound.tags)
    return ref.kind == MESH_SERVICE


def selects(ref: TargetRef, dp: Dataplane) -> bool:
    """Does the ref pick this proxy at all (for its outbound and proxy-wide policies)?"""
    if ref.kind == MESH:
        return _is_sidecar(ref)
    if ref.kind == DATAPLANE and not ref.section_name:
        return _dataplane_matches(ref, dp)
    return any(selects_inbound(ref, ib, dp) for ib in dp.networking.inbound)


def specificity(ref: TargetRef) -> tuple[int, int, int]:
    """(kind rank, Dataplane: labels < name, without < with sectionName). Tags do not count (Kuma §1.5)."""
    named = 1 if ref.kind == DATAPLANE and ref.name else 0
    return (_RANK.get(ref.kind, 0), named, 1 if ref.section_name else 0)


_ORIGIN_RANK = {"global": 0, "": 1, "zone": 2}


class _Reversed(str):
    """A string that sorts backwards: among equals, Kuma gives the alphabetically smaller name the higher priority."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)


def sort_key(ref: TargetRef, policy_name: str, labels: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """Lowest priority first, so later confs are merged on top: kind specificity, `kuma.io/origin`, then the
    display name in reverse (`zzz` lowest, `aaa` highest). Never depends on store order."""
    labels = labels or {}
    display = labels.get("kuma.io/display-name") or policy_name
    return (*specificity(ref), _ORIGIN_RANK.get(labels.get("kuma.io/origin", ""), 1), _Reversed(display))
