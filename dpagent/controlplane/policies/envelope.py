"""The policy envelope every kind shares: `type`, `mesh`, `name`, `labels`, `spec.targetRef`, and the `to[]`,
`from[]`, `rules[]` or single `default` sections, validated and parsed once here (reference kuma-policies.md §1.1-1.3).

A plugin only says which sections and targetRef kinds it accepts and validates its own `default` conf; the typed
`Policy` keeps each conf as plain JSON so the generic merge (merge.py) can fold confs the way Kuma does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from dpagent.controlplane.policies.targetref import KINDS, MESH, TargetRef, validate_target_ref
from dpagent.errors import ValidationError
from dpagent.model.validation import Violations, join

TO, FROM, RULES, DEFAULT = "to", "from", "rules", "default"
_TOP = ("type", "mesh", "name", "labels", "spec", "creationTime", "modificationTime")

ConfValidator = Callable[[Violations, Mapping[str, Any], str, str], None]


@dataclass(frozen=True)
class Shape:
    """What one policy kind's spec may hold."""

    sections: tuple[str, ...]  # a subset of (to, from, rules, default)
    top_kinds: tuple[str, ...] = KINDS
    from_kinds: tuple[str, ...] = KINDS
    to_kinds: tuple[str, ...] = KINDS
    required_one_of: tuple[str, ...] = ()  # at least one of these sections must be non-empty
    # Route kinds: a to[] item carries `rules` (and `hostnames`) instead of `default`; its Entry conf is then the
    # item without its targetRef, and the plugin validates the whole item (its checks depend on the top kind).
    route_to: bool = False
    # Kuma refuses `rules` together with `to` or `from` in one policy of this kind.
    rules_alone: bool = False


class Entry(msgspec.Struct, frozen=True):
    """One `to[]`/`from[]` item (target_ref set) or `rules[]` item (target_ref None), its conf kept as JSON."""

    conf: dict[str, Any]
    target_ref: TargetRef | None = None


class Policy(msgspec.Struct, frozen=True):
    """A parsed policy of any kind; what generic matching and merging read."""

    kind: str
    mesh: str
    name: str
    target_ref: TargetRef
    labels: dict[str, str] = {}
    to: tuple[Entry, ...] = ()
    from_: tuple[Entry, ...] = ()
    rules: tuple[Entry, ...] = ()
    default: dict[str, Any] | None = None

    @property
    def inbound(self) -> bool:
        return bool(self.from_ or self.rules)


def check_envelope(v: Violations, doc: Any, kind: str) -> Mapping[str, Any] | None:
    """Record the problems of everything around `spec` (type, mesh, name, labels); returns the spec mapping when
    there is one to check further. Every kind's validation starts here."""
    top = v.document(doc, kind, _TOP)
    if top is None:
        return None
    mesh = v.mesh_ref(top.get("mesh"), "mesh")  # Kuma's older set: meshes made before 2.5 may hold '_'
    v.name(top.get("name"), "name")
    v.labels(top.get("labels"), mesh or "")  # Kubernetes label rules; `kuma.io/mesh` must match `mesh`
    return v.mapping(top.get("spec"), "spec")


def validate_policy(kind: str, shape: Shape, conf: ConfValidator, doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded policy document, with Kuma-style paths (`spec.from[0].default.action`)."""
    v = Violations()
    spec = check_envelope(v, doc, kind)
    if spec is None:
        return v.items
    sections = [s for s in (TO, FROM, RULES, DEFAULT) if s in shape.sections]
    v.unknown(spec, ("targetRef", *sections), "spec")
    inbound = bool(spec.get(FROM) or spec.get(RULES))
    validate_target_ref(v, spec.get("targetRef"), "spec.targetRef", shape.top_kinds, required=False,
                        inbound_policy=inbound)
    if shape.rules_alone and spec.get(RULES) and (spec.get(TO) or spec.get(FROM)):
        v.add("spec.rules", "must not be used together with 'to' or 'from'; split them into two policies")
    if shape.required_one_of and not any(spec.get(s) for s in shape.required_one_of) \
            and all(isinstance(spec.get(s, []), list) for s in shape.required_one_of):
        names = " or ".join(f"'{s}'" for s in shape.required_one_of)
        v.add(join("spec", shape.required_one_of[0]) if len(shape.required_one_of) == 1 else "spec",
              f"needs at least one item in {names}")
    for section, kinds in ((TO, shape.to_kinds), (FROM, shape.from_kinds)):
        if section not in shape.sections:
            continue
        for i, item in _items(v, spec, section):
            p = f"spec.{section}[{i}]"
            v.unknown(item, ("targetRef", "default"), p)
            validate_target_ref(v, item.get("targetRef"), join(p, "targetRef"), kinds)
            _conf(v, conf, item.get("default"), join(p, "default"), section)
    if RULES in shape.sections:
        for i, item in _items(v, spec, RULES):
            p = f"spec.rules[{i}]"
            v.unknown(item, ("default",), p)
            _conf(v, conf, item.get("default"), join(p, "default"), RULES)
    if DEFAULT in shape.sections and DEFAULT in spec:
        _conf(v, conf, spec.get(DEFAULT), "spec.default", DEFAULT)
    return v.items


def _items(v: Violations, spec: Mapping[str, Any], section: str) -> list[tuple[int, Mapping[str, Any]]]:
    out = []
    for i, raw in enumerate(v.sequence(spec.get(section), f"spec.{section}")):
        item = v.mapping(raw, f"spec.{section}[{i}]")
        if item is not None:
            out.append((i, item))
    return out


def _conf(v: Violations, conf: ConfValidator, doc: Any, path: str, section: str) -> None:
    m = v.mapping(doc, path)
    if m is not None:
        conf(v, m, path, section)


def parse_policy(kind: str, shape: Shape, conf: ConfValidator, doc: Any,
                 problems: list[tuple[str, str]] | None = None) -> Policy:
    """Validate (unless the caller passes its own `problems`) then convert; raises ValidationError listing every
    violation."""
    if problems is None:
        problems = validate_policy(kind, shape, conf, doc)
    if problems:
        raise ValidationError(f"{kind} {doc.get('name')!r}" if isinstance(doc, dict) else kind, problems)
    spec = doc["spec"]
    ref = msgspec.convert(spec.get("targetRef") or {"kind": MESH}, TargetRef)

    def body(item: Mapping[str, Any], section: str) -> dict[str, Any]:
        if section == TO and shape.route_to:
            return {k: val for k, val in item.items() if k != "targetRef"}
        return dict(item["default"])

    def entries(section: str, with_ref: bool) -> tuple[Entry, ...]:
        return tuple(Entry(body(item, section), msgspec.convert(item["targetRef"], TargetRef) if with_ref
                           else None) for item in spec.get(section) or [])

    return Policy(kind=kind, mesh=doc["mesh"], name=doc["name"], target_ref=ref, labels=dict(doc.get("labels") or {}),
                  to=entries(TO, True), from_=entries(FROM, True), rules=entries(RULES, False),
                  default=dict(spec[DEFAULT]) if isinstance(spec.get(DEFAULT), dict) else None)
