"""MeshProxyPatch's spec: `default.appendModifications[]`, each item one modification of a cluster, listener,
network filter, HTTP filter or virtual host, typed, with validation that reports every violation with its path
(one kind per item, which operations each kind has, value/jsonPatches per operation, values Envoy can parse)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpagent import safe_yaml
from dpagent.controlplane.policies.envelope import DEFAULT, Shape
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from dpagent.model.validation import Violations, join

KIND = "MeshProxyPatch"
SHAPE = Shape(sections=(DEFAULT,), top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET))

ADD, REMOVE, PATCH = "Add", "Remove", "Patch"
ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER = "AddFirst", "AddLast", "AddBefore", "AddAfter"
FILTER_OPS = (ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER, PATCH, REMOVE)
RESOURCE_OPS = (ADD, REMOVE, PATCH)
FILTER_MATCH = ("origin", "name", "listenerName", "listenerTags")
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind → (operations, match fields)
    "cluster": (RESOURCE_OPS, ("origin", "name")),
    "listener": (RESOURCE_OPS, ("origin", "name", "tags")),
    "networkFilter": (FILTER_OPS, FILTER_MATCH),
    "httpFilter": (FILTER_OPS, FILTER_MATCH),
    "virtualHost": (RESOURCE_OPS, ("origin", "name", "routeConfigurationName")),
}
JSON_OPS = ("add", "remove", "replace", "move", "copy")


@dataclass(frozen=True)
class Match:
    origin: str | None = None
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)  # listener tags, or a filter's listenerTags
    listener_name: str | None = None
    route_configuration_name: str | None = None


@dataclass(frozen=True)
class Modification:
    kind: str
    operation: str
    match: Match = Match()
    value: Any = None  # the raw YAML value; parsed into the Envoy type when applied
    json_patches: tuple[Mapping[str, Any], ...] = ()


def parse_conf(conf: Mapping[str, Any]) -> tuple[Modification, ...]:
    out = []
    for item in conf.get("appendModifications") or ():
        kind = next(k for k in KINDS if item.get(k) is not None)
        body = item[kind]
        m = body.get("match") or {}
        out.append(Modification(kind, body["operation"], Match(
            origin=m.get("origin"), name=m.get("name"), tags=dict(m.get("tags") or m.get("listenerTags") or {}),
            listener_name=m.get("listenerName"), route_configuration_name=m.get("routeConfigurationName")),
            body.get("value"), tuple(body.get("jsonPatches") or ())))
    return tuple(out)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("appendModifications",), path)
    lp = join(path, "appendModifications")
    for i, raw in enumerate(v.sequence(conf.get("appendModifications"), lp)):
        ip = f"{lp}[{i}]"
        item = v.mapping(raw, ip)
        if item is None:
            continue
        v.unknown(item, KINDS, ip)
        kinds = [k for k in KINDS if item.get(k) is not None]
        if len(kinds) != 1:
            v.add(ip, f"must define exactly one of: {', '.join(KINDS)}")
        for kind in kinds:
            _modification(v, kind, item[kind], join(ip, kind))


def _modification(v: Violations, kind: str, raw: Any, path: str) -> None:
    body = v.mapping(raw, path)
    if body is None:
        return
    ops, match_fields = KINDS[kind]
    v.unknown(body, ("operation", "match", "value", "jsonPatches"), path)
    op = body.get("operation")
    if op is None:
        v.add(join(path, "operation"), "must be defined")
    elif op not in ops:
        v.add(join(path, "operation"), f"must be one of: {', '.join(ops)}")
    match = v.mapping(body.get("match"), join(path, "match"), required=False)
    if match is not None:
        v.unknown(match, match_fields, join(path, "match"))
        for key in match_fields:
            if key.endswith("ags"):
                if match.get(key) is not None:
                    v.tags(match.get(key), join(join(path, "match"), key))
            else:
                v.string(match.get(key), join(join(path, "match"), key), required=False)
    has_value, has_patches = body.get("value") is not None, body.get("jsonPatches") is not None
    if op == ADD and kind in ("cluster", "listener") and match is not None:
        v.add(join(path, "match"), "must not be defined for operation Add")
    if kind == "virtualHost" and match is None:  # a virtual host only exists inside a route configuration
        v.add(join(path, "match"), "must be defined")
    if op in (ADD_BEFORE, ADD_AFTER) and (match is None or not match.get("name")):
        v.add(join(path, "match.name"), f"must be defined for operation {op}")
    if op == REMOVE:
        if has_value:
            v.add(join(path, "value"), "must not be defined for operation Remove")
        if has_patches:
            v.add(join(path, "jsonPatches"), "must not be defined for operation Remove")
    elif op == PATCH:
        if has_value == has_patches:
            v.add(path, "must define exactly one of: value, jsonPatches")
    elif op in ops:  # an Add kind
        if not has_value:
            v.add(join(path, "value"), f"must be defined for operation {op}")
        if has_patches:
            v.add(join(path, "jsonPatches"), f"must not be defined for operation {op}")
    if has_value:
        _value(v, kind, body["value"], join(path, "value"), op)
    if has_patches:
        _json_patches(v, body["jsonPatches"], join(path, "jsonPatches"))


def _value(v: Violations, kind: str, raw: Any, path: str, op: Any) -> None:
    import yaml

    from dpagent.controlplane.policies.meshproxypatch import protos  # Envoy protos only on the CP

    value = raw
    if isinstance(raw, str):  # Kuma's docs write the value as a YAML block string
        try:
            value = safe_yaml.load(raw)
        except yaml.YAMLError as e:
            v.add(path, f"must be YAML: {safe_yaml.describe(e)}")
            return
    if not isinstance(value, Mapping):
        v.add(path, f"must be a {protos.MESSAGES[kind].DESCRIPTOR.full_name} object")
        return
    try:
        msg = protos.parse(kind, dict(value))
    except ValueError as e:
        v.add(path, f"must be a valid {protos.MESSAGES[kind].DESCRIPTOR.full_name}: {e}")
        return
    if op != PATCH and kind in ("cluster", "listener", "virtualHost", "networkFilter", "httpFilter") \
            and not getattr(msg, "name", ""):
        v.add(join(path, "name"), "must be defined")


def _json_patches(v: Violations, raw: Any, path: str) -> None:
    items = v.sequence(raw, path)
    if not items:
        v.add(path, "must not be empty")
    for i, p in enumerate(items):
        pp = f"{path}[{i}]"
        op = v.mapping(p, pp)
        if op is None:
            continue
        v.unknown(op, ("op", "path", "value", "from"), pp)
        kind = op.get("op")
        if kind not in JSON_OPS:
            v.add(join(pp, "op"), f"must be one of: {', '.join(JSON_OPS)}")
        target = v.string(op.get("path"), join(pp, "path"))
        if target is not None and target and not target.startswith("/"):
            v.add(join(pp, "path"), "must be a JSON pointer starting with /")
        if kind in ("move", "copy"):
            v.string(op.get("from"), join(pp, "from"))
        elif op.get("from") is not None:
            v.add(join(pp, "from"), "must be defined only for move and copy")
        if kind in ("add", "replace") and "value" not in op:
            v.add(join(pp, "value"), f"must be defined for op {kind}")


def value_of(raw: Any) -> Any:
    """A modification's value as a mapping: Kuma's docs write it as a YAML block string, some users as YAML.

    The string is user input inside a stored policy: aliases in it would expand when the protobuf is built, as
    in a body sent to the API (issue 9, item 7), so it is read by the same alias-free loader."""
    return safe_yaml.load(raw) if isinstance(raw, str) else raw
