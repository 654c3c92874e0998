"""targetRef and backendRef validation as the route policies need it: the per-kind rules of reference
kuma-policies.md §1.2 for the kinds only routes name (MeshGateway, MeshExternalService, MeshMultiZoneService,
`namespace`), plus the `weight`/`port` a backendRef adds (§2.1). The parsed targetRef is the one TargetRef of
policies/targetref.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec

from dpagent.controlplane.policies.envelope import TO, Shape, check_envelope
from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TargetRef,
    validate_proxy_types,
)
from dpagent.model.validation import Violations, join

R = TypeVar("R")

# Where a route policy may point (§2.1, §3).
TOP_KINDS = (MESH, DATAPLANE, MESH_SUBSET, MESH_GATEWAY, MESH_SERVICE, MESH_SERVICE_SUBSET)
TO_KINDS = (MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)
GATEWAY_TO_KINDS = (MESH,)
# Both route kinds: `to[]` only, each item keeping its whole conf (rules, hostnames) for the route builders.
ROUTE_SHAPE = Shape(sections=(TO,), top_kinds=TOP_KINDS, to_kinds=TO_KINDS, route_to=True)
BACKEND_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)
MIRROR_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET)

_REF_FIELDS = ("kind", "name", "namespace", "labels", "tags", "sectionName", "proxyTypes", "mesh")
_BACKEND_FIELDS = (*_REF_FIELDS, "weight", "port")
# §1.2: lower-case alphanumerics plus '-', '.' and '_'.
REF_NAME_RE = re.compile(r"^[a-z0-9._-]+$")
_NAME_MAX = 253

# Kind → fields it must not carry (§1.2). `mesh` is reserved and refused for every kind.
_FORBIDDEN: Mapping[str, tuple[str, ...]] = {
    MESH: ("name", "tags", "labels", "namespace", "sectionName"),
    DATAPLANE: ("tags", "proxyTypes"),
    MESH_SUBSET: ("name", "labels", "namespace", "sectionName"),
    MESH_SERVICE: ("tags", "proxyTypes"),
    MESH_SERVICE_SUBSET: ("labels", "namespace", "sectionName", "proxyTypes"),
    MESH_GATEWAY: ("labels", "namespace", "sectionName", "proxyTypes"),
    MESH_EXTERNAL_SERVICE: ("tags", "proxyTypes", "sectionName"),
    MESH_MULTI_ZONE_SERVICE: ("tags", "proxyTypes"),
    MESH_HTTP_ROUTE: ("tags", "proxyTypes", "sectionName"),
}
_NAME_OR_LABELS = (MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE, MESH_HTTP_ROUTE)
_NAME_REQUIRED = (MESH_SERVICE_SUBSET, MESH_GATEWAY)


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class BackendRef(_S):
    """Where a route sends traffic. `port` (or `section_name`) on a MeshService means a real MeshService resource;
    without them the name is a legacy `kuma.io/service` value (§14)."""

    kind: str
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] = {}
    tags: dict[str, str] = {}
    section_name: str = ""
    weight: int = 1
    port: int | None = None

    @property
    def legacy(self) -> bool:
        return self.kind == MESH_SERVICE_SUBSET or (self.kind == MESH_SERVICE and not self.port
                                                    and not self.section_name and not self.labels)


def legacy_destination(ref: TargetRef | None) -> str | None:
    """The `kuma.io/service` a `to[].targetRef` names, or None when it names something else (see below)."""
    return ref.name if ref is not None and ref.name and names_legacy_service(ref, ref.name) else None


def rules_by_destination(items: Iterable[Item], convert: Callable[[Item], R]) -> dict[str, list[R]]:
    """Matched `to[]` items (lowest priority first) grouped by the legacy service they name, in one pass over
    them; `convert` turns an item into its typed rules."""
    out: dict[str, list[R]] = {}
    for item in items:
        service = legacy_destination(item.target_ref)
        if service is not None:
            out.setdefault(service, []).append(convert(item))
    return out


def names_legacy_service(ref: TargetRef, service: str) -> bool:
    """Does a `to[].targetRef` reach the legacy destination `service`? Only a MeshService ref by name without
    `sectionName` or labels names a `kuma.io/service` (§14); refs to real resources wait until this CP has them."""
    return ref.kind == MESH_SERVICE and ref.name == service and not ref.section_name and not ref.labels


def _given(value: Any) -> bool:
    return value not in (None, "", {}, [])


def validate_ref(v: Violations, doc: Any, path: str, kinds: tuple[str, ...], *, required: bool = True,
                 listener_tags: bool = False, backend: bool = False) -> str | None:
    """Record every problem with one targetRef (or backendRef when `backend`); returns its kind when usable.

    `listener_tags`: the policy may pick MeshGateway listeners by tags. No route policy has `from`/`rules` at the
    top level, so a Dataplane `sectionName` is never allowed here.
    """
    ref = v.mapping(doc, path, required=required)
    if ref is None:
        return None
    v.unknown(ref, _BACKEND_FIELDS if backend else _REF_FIELDS, path)
    kind = ref.get("kind")
    if kind is None:
        v.add(join(path, "kind"), "must be defined")
        return None
    if kind not in kinds:
        v.add(join(path, "kind"), f"value is not supported (expected one of: {', '.join(kinds)})")
        return None
    forbidden = list(_FORBIDDEN.get(kind, ()))
    if kind == MESH_GATEWAY and not listener_tags:
        forbidden.append("tags")
    if kind == DATAPLANE:
        forbidden.append("sectionName")
    for f in ("mesh", *forbidden):
        if _given(ref.get(f)) or (f == "proxyTypes" and ref.get(f) == []):
            why = ("names an inbound, so it only applies to inbound policies (with 'from' or 'rules'); route "
                   "policies configure outbounds" if kind == DATAPLANE and f == "sectionName" else
                   "is reserved" if f == "mesh" else f"must not be set with kind {kind}")
            v.add(join(path, f), why)
    has_name = _given(ref.get("name"))
    has_labels = _given(ref.get("labels"))
    if kind in _NAME_OR_LABELS and not has_name and not has_labels:
        v.add(path, f"kind {kind} needs either 'name' or 'labels'")
    if kind in _NAME_REQUIRED and not has_name:
        v.add(join(path, "name"), "must be defined")
    if has_labels and (has_name or _given(ref.get("namespace"))) and "labels" not in forbidden:
        v.add(join(path, "labels"), "must not be combined with 'name' or 'namespace'")
    if has_name and "name" not in forbidden:
        name = v.string(ref.get("name"), join(path, "name"))
        if name is not None and (len(name) > _NAME_MAX or not REF_NAME_RE.fullmatch(name)):
            v.add(join(path, "name"), "must be lower-case letters, digits, '-', '.' or '_'")
    for f in ("namespace", "sectionName"):
        if _given(ref.get(f)) and f not in forbidden:
            v.string(ref.get(f), join(path, f))
    if has_labels and "labels" not in forbidden:
        v.labels(ref.get("labels"), "", join(path, "labels"))
    if _given(ref.get("tags")) and "tags" not in forbidden:
        v.tags(ref.get("tags"), join(path, "tags"))
    if "proxyTypes" in ref and "proxyTypes" not in forbidden and kind in (MESH, MESH_SUBSET):
        validate_proxy_types(v, ref.get("proxyTypes"), join(path, "proxyTypes"))
    if backend:
        _backend_fields(v, ref, path, kind)
    return str(kind)


def _backend_fields(v: Violations, ref: Mapping[str, Any], path: str, kind: str) -> None:
    weight = ref.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int) or weight < 0):
        v.add(join(path, "weight"), "must be a whole number, 0 or more")
    if ref.get("port") is not None:
        v.port(ref.get("port"), join(path, "port"))
    elif kind == MESH_MULTI_ZONE_SERVICE:
        v.add(join(path, "port"), f"must be defined with kind {kind}")


def validate_route_spec(v: Violations, doc: Any, kind: str) -> tuple[list[Any], bool]:
    """What every route policy's document shares: the envelope, a spec of `targetRef` and `to` only, and the top
    targetRef's kinds. Returns the raw `to[]` items and whether the route is a MeshGateway's (whose `to[]` items
    name other kinds)."""
    spec = check_envelope(v, doc, kind)
    if spec is None:
        return [], False
    v.unknown(spec, ("targetRef", "to"), "spec")
    top = validate_ref(v, spec.get("targetRef"), "spec.targetRef", TOP_KINDS, required=False, listener_tags=True)
    return v.sequence(spec.get("to"), "spec.to"), top == MESH_GATEWAY
