"""MeshTCPRoute's schema (typed Structs) and its collect-every-violation validation (reference kuma-policies.md §3,
targetRefs §1.2). Only `rules[0]` of a `to[]` item takes effect; later rules are accepted, as in Kuma."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import Policy, parse_policy
from dpagent.controlplane.policies.meshroute.refs import (
    BACKEND_KINDS,
    GATEWAY_TO_KINDS,
    ROUTE_SHAPE,
    TO_KINDS,
    BackendRef,
    validate_ref,
    validate_route_spec,
)
from dpagent.model.validation import Violations, join

KIND = "MeshTCPRoute"


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class RuleConf(_S):
    backend_refs: tuple[BackendRef, ...]


class Rule(_S):
    default: RuleConf


class ToConf(_S):
    """One `to[]` item without its targetRef: what the generic envelope keeps as the item's conf (route_to)."""

    rules: tuple[Rule, ...] = ()


SHAPE = ROUTE_SHAPE


def to_rules(conf: Mapping[str, Any]) -> tuple[Rule, ...]:
    """The typed rules of one matched `to[]` item (its conf was validated when the policy was parsed)."""
    return msgspec.convert(conf, ToConf).rules


def validate_meshtcproute(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded MeshTCPRoute document, with Kuma-style paths."""
    v = Violations()
    items, gateway = validate_route_spec(v, doc, KIND)
    to_kinds = GATEWAY_TO_KINDS if gateway else TO_KINDS
    for _, p, item in v.objects(items, "spec.to", ("targetRef", "rules")):
        validate_ref(v, item.get("targetRef"), join(p, "targetRef"), to_kinds)
        if item.get("rules") is None:
            v.add(join(p, "rules"), "must be defined")
        for j, raw_rule in enumerate(v.sequence(item.get("rules"), join(p, "rules"))):
            _rule(v, raw_rule, f"{join(p, 'rules')}[{j}]")
    return v.items


def _rule(v: Violations, raw: Any, path: str) -> None:
    rule = v.mapping(raw, path)
    if rule is None:
        return
    v.unknown(rule, ("default",), path)
    conf = v.mapping(rule.get("default"), join(path, "default"))
    if conf is None:
        return
    p = join(path, "default")
    v.unknown(conf, ("backendRefs",), p)
    refs = v.sequence(conf.get("backendRefs"), join(p, "backendRefs"))
    if not refs and isinstance(conf.get("backendRefs", []), list):
        v.add(join(p, "backendRefs"), "needs at least one item")
    for k, ref in enumerate(refs):
        validate_ref(v, ref, f"{join(p, 'backendRefs')}[{k}]", BACKEND_KINDS, backend=True)


def parse_meshtcproute(doc: Any) -> Policy:
    """Validate then convert to the generic Policy (to[] confs kept as JSON); raises ValidationError listing every
    violation."""
    return parse_policy(KIND, SHAPE, lambda *_: None, doc, problems=validate_meshtcproute(doc))
