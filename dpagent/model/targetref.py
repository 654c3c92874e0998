"""targetRef semantics shared by every policy: the kinds, which dataplanes (and inbounds) a ref selects, and the
specificity order used to sort policies from least to most specific.

Selection is decided per inbound, because one dataplane can carry several services and a MeshService policy for
one of them must not leak onto the others; a dataplane is selected when any of its inbounds is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.model.dataplane import SERVICE_TAG, Dataplane, Inbound
from dpagent.model.validation import Violations, join

MESH = "Mesh"
MESH_SUBSET = "MeshSubset"
MESH_SERVICE = "MeshService"
MESH_SERVICE_SUBSET = "MeshServiceSubset"
KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET)
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}


class TargetRef(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False, frozen=True):
    kind: str = MESH
    name: str = ""
    tags: dict[str, str] = {}

    def describe(self) -> str:
        """Short human form for warnings and `inspect`: `MeshService(web)`, `MeshSubset{version=v2}`."""
        tags = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return f"{self.kind}" + (f"({self.name})" if self.name else "") + (f"{{{tags}}}" if tags else "")


def validate_target_ref(v: Violations, doc: Any, path: str, kinds: tuple[str, ...] = KINDS,
                        required: bool = True) -> None:
    """Record every problem with one targetRef; Kuma's rules: which of name/tags each kind needs or forbids."""
    ref = v.mapping(doc, path, required=required)
    if ref is None:
        return
    v.unknown(ref, ("kind", "name", "tags"), path)
    kind = ref.get("kind")
    if kind is None:
        v.add(join(path, "kind"), "must be defined")
        return
    if kind not in kinds:
        v.add(join(path, "kind"), f"value is not supported (expected one of: {', '.join(kinds)})")
        return
    needs_name = kind in (MESH_SERVICE, MESH_SERVICE_SUBSET)
    needs_tags = kind in (MESH_SUBSET, MESH_SERVICE_SUBSET)
    if needs_name:
        v.string(ref.get("name"), join(path, "name"))
    elif ref.get("name") not in (None, ""):
        v.add(join(path, "name"), f"must not be set with kind {kind}")
    if needs_tags:
        tags = v.tags(ref.get("tags"), join(path, "tags"), required_keys=())
        if tags is None or not tags:
            v.add(join(path, "tags"), f"must be set with kind {kind}")
    elif ref.get("tags") not in (None, {}):
        v.add(join(path, "tags"), f"must not be set with kind {kind}")


def tags_match(ref_tags: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    return all(tags.get(k) == val for k, val in ref_tags.items())


def selects_inbound(ref: TargetRef, inbound: Inbound) -> bool:
    if ref.kind == MESH:
        return True
    if ref.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and inbound.tags.get(SERVICE_TAG) != ref.name:
        return False
    if ref.kind in (MESH_SUBSET, MESH_SERVICE_SUBSET):
        return tags_match(ref.tags, inbound.tags)
    return ref.kind == MESH_SERVICE


def selects(ref: TargetRef, dp: Dataplane) -> bool:
    """Mesh: every dataplane; the other kinds: at least one inbound carries the service and/or all the tags."""
    if ref.kind == MESH:
        return True
    return any(selects_inbound(ref, ib) for ib in dp.networking.inbound)


def specificity(ref: TargetRef) -> tuple[int, int]:
    """Kind rank first (Mesh < MeshSubset < MeshService < MeshServiceSubset), then how many tags narrow it."""
    return (_RANK.get(ref.kind, -1), len(ref.tags))


def sort_key(ref: TargetRef, policy_name: str) -> tuple[int, int, str]:
    """Least specific first; ties broken by policy name so the order never depends on store order."""
    return (*specificity(ref), policy_name)
