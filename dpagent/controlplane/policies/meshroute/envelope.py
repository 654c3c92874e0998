"""The resource envelope of a route policy (`type`, `mesh`, `name`, `labels`, `spec`) and the typed form's common
parts. A route's `to[]` items carry `rules` instead of the `default` other policies have, so the route kinds check
their envelope here rather than through a generic `to[].default` shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.errors import ValidationError
from dpagent.model.validation import Violations

_TOP = ("type", "mesh", "name", "labels", "spec", "creationTime", "modificationTime")


def check_envelope(v: Violations, doc: Any, kind: str) -> Mapping[str, Any] | None:
    """Record envelope violations; returns the spec mapping when there is one to check further."""
    top = v.mapping(doc, "")
    if top is None:
        return None
    v.unknown(top, _TOP, "")
    if top.get("type", kind) != kind:
        v.add("type", f"must be {kind}, not {top.get('type')!r}")
    mesh = v.mesh_ref(top.get("mesh"), "mesh")
    v.name(top.get("name"), "name")
    v.labels(top.get("labels"), mesh or "")
    return v.mapping(top.get("spec"), "spec")


def convert(doc: Any, problems: list[tuple[str, str]], kind: str, typ: type[Any]) -> Any:
    """Typed policy from a document that `problems` (its validation result) says is clean."""
    if problems:
        what = f"{kind} {doc.get('name')!r}" if isinstance(doc, Mapping) and doc.get("name") else kind
        raise ValidationError(what, problems)
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    clean.setdefault("type", kind)
    spec = dict(clean.get("spec") or {})
    if not spec.get("targetRef"):
        spec["targetRef"] = {"kind": "Mesh"}  # §1.1: a missing top-level targetRef means the whole mesh
    clean["spec"] = spec
    return msgspec.convert(clean, typ)
