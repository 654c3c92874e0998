"""Kuma's `MeshTrafficPermission` policy: schema and collect-every-violation validation.

Semantics (which peers end up allowed) live in controlplane/policies/meshtrafficpermission; this module only
says what a well-formed document is, so the agent CLI and the REST API reject the same things.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dpagent.errors import ValidationError
from dpagent.model.targetref import KINDS, TargetRef, validate_target_ref
from dpagent.model.validation import Violations, join

KIND = "MeshTrafficPermission"
ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"
ACTIONS = (ALLOW, DENY, ALLOW_WITH_SHADOW_DENY)
TOP_KINDS = KINDS
FROM_KINDS = KINDS


class _S(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False):
    pass


class Conf(_S):
    action: str


class From(_S):
    target_ref: TargetRef
    default: Conf


class Spec(_S):
    target_ref: TargetRef = msgspec.field(default_factory=TargetRef)
    from_: list[From] = msgspec.field(default_factory=list, name="from")


class MeshTrafficPermission(_S):
    mesh: str
    name: str
    spec: Spec
    type: str = KIND
    labels: dict[str, str] = {}

    @property
    def target_ref(self) -> TargetRef:
        return self.spec.target_ref


_TOP = ("type", "mesh", "name", "labels", "spec", "creationTime", "modificationTime")


def validate_meshtrafficpermission(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded MeshTrafficPermission document, with Kuma-style paths."""
    v = Violations()
    top = v.mapping(doc, "")
    if top is None:
        return v.items
    v.unknown(top, _TOP, "")
    if top.get("type", KIND) != KIND:
        v.add("type", f"must be {KIND}, not {top.get('type')!r}")
    v.name(top.get("mesh"), "mesh")
    v.name(top.get("name"), "name")
    v.tags(top.get("labels"), "labels")
    spec = v.mapping(top.get("spec"), "spec")
    if spec is None:
        return v.items
    v.unknown(spec, ("targetRef", "from"), "spec")
    validate_target_ref(v, spec.get("targetRef"), "spec.targetRef", TOP_KINDS, required=False)
    items = v.sequence(spec.get("from"), "spec.from")
    if not items and isinstance(spec.get("from", []), list):
        v.add("spec.from", "needs at least one item")
    for i, raw in enumerate(items):
        p = f"spec.from[{i}]"
        item = v.mapping(raw, p)
        if item is None:
            continue
        v.unknown(item, ("targetRef", "default"), p)
        validate_target_ref(v, item.get("targetRef"), join(p, "targetRef"), FROM_KINDS)
        conf = v.mapping(item.get("default"), join(p, "default"))
        if conf is None:
            continue
        v.unknown(conf, ("action",), join(p, "default"))
        action = conf.get("action")
        if action is None:
            v.add(join(p, "default.action"), "must be defined")
        elif action not in ACTIONS:
            v.add(join(p, "default.action"), f"must be one of: {', '.join(ACTIONS)}")
    return v.items


def parse_meshtrafficpermission(doc: Any, what: str = KIND) -> MeshTrafficPermission:
    """Validate then convert; raises ValidationError listing every violation."""
    problems = validate_meshtrafficpermission(doc)
    if problems:
        raise ValidationError(what, problems)
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    return msgspec.convert(clean, MeshTrafficPermission)
