"""MeshTrafficPermission's spec: the legacy `from[].default.action` and the SPIFFE `rules[].default.{deny, allow,
allowWithShadowDeny}` match lists (Kuma 2.12+), their typed form and their validation. The envelope, targetRefs
and section shapes are validated generically (policies/envelope.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import FROM, RULES, Shape
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from dpagent.model.validation import HOST_RE, Violations, join

KIND = "MeshTrafficPermission"
ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"
ACTIONS = (ALLOW, DENY, ALLOW_WITH_SHADOW_DENY)
EXACT, PREFIX = "Exact", "Prefix"
LISTS = ("deny", "allow", "allowWithShadowDeny")

SHAPE = Shape(sections=(FROM, RULES),
              top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
              from_kinds=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
              required_one_of=(FROM, RULES))

# spiffe://<trust domain>[/<path>]: trust domain of lower-case letters, digits, '.', '-', '_' (SPIFFE ID spec).
SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class StringMatch(_S):
    type: str
    value: str


class Match(_S):
    """One client a rule names: by SPIFFE ID (Exact or Prefix) and/or by the SNI it asked for; both must hold."""

    spiffe_id: StringMatch | None = msgspec.field(default=None, name="spiffeID")
    sni: StringMatch | None = None

    def describe(self) -> str:
        parts = []
        if self.spiffe_id is not None:
            parts.append(f"spiffeID {self.spiffe_id.type} {self.spiffe_id.value}")
        if self.sni is not None:
            parts.append(f"sni {self.sni.type} {self.sni.value}")
        return " and ".join(parts)


class FromConf(_S):
    action: str


class RuleConf(_S):
    deny: tuple[Match, ...] = ()
    allow: tuple[Match, ...] = ()
    allow_with_shadow_deny: tuple[Match, ...] = ()


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    if section == FROM:
        v.unknown(conf, ("action",), path)
        action = conf.get("action")
        if action is None:
            v.add(join(path, "action"), "must be defined")
        elif action not in ACTIONS:
            v.add(join(path, "action"), f"must be one of: {', '.join(ACTIONS)}")
        return
    v.unknown(conf, LISTS, path)
    if not any(conf.get(k) for k in LISTS):
        v.add(path, "must define at least one of: " + ", ".join(LISTS))
    for key in LISTS:
        for i, raw in enumerate(v.sequence(conf.get(key), join(path, key))):
            _match(v, raw, f"{join(path, key)}[{i}]")


def _match(v: Violations, raw: Any, path: str) -> None:
    m = v.mapping(raw, path)
    if m is None:
        return
    v.unknown(m, ("spiffeID", "sni"), path)
    if m.get("spiffeID") is None and m.get("sni") is None:
        v.add(path, "must define spiffeID and/or sni (an empty match would match every client)")
    sid = v.mapping(m.get("spiffeID"), join(path, "spiffeID"), required=False)
    if sid is not None:
        v.unknown(sid, ("type", "value"), join(path, "spiffeID"))
        if sid.get("type") not in (EXACT, PREFIX):
            v.add(join(path, "spiffeID.type"), f"must be one of: {EXACT}, {PREFIX}")
        value = v.string(sid.get("value"), join(path, "spiffeID.value"))
        if value is not None and not SPIFFE_RE.match(value):
            v.add(join(path, "spiffeID.value"), f"{value!r} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")
    sni = v.mapping(m.get("sni"), join(path, "sni"), required=False)
    if sni is not None:
        v.unknown(sni, ("type", "value"), join(path, "sni"))
        if sni.get("type") != EXACT:
            v.add(join(path, "sni.type"), f"must be {EXACT}")
        value = v.string(sni.get("value"), join(path, "sni.value"))
        if value is not None and (value != value.lower() or not HOST_RE.match(value)):
            v.add(join(path, "sni.value"), f"{value!r} is not a lower-case DNS name")


def rule_conf(conf: Mapping[str, Any]) -> RuleConf:
    return msgspec.convert(conf, RuleConf)
