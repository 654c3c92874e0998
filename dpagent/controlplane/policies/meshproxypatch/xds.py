"""MeshProxyPatch modifications applied to one proxy's ResourceSet, in order, after every other policy.

Resources are often shared serialised objects: every change is made on a copy and swapped in with
`ResourceSet.replace` (or `add`/`remove`), so an edit never leaks into another proxy; the patched copy of a shared
resource is itself shared (memoised per input and modification), so a mesh-wide patch costs one build per resource,
not one per proxy. `match.origin` compares with
the ResourceSet origins (inbound, outbound, transparent, direct-access, dynconf, secrets; `user` for resources a
patch added); Kuma origins we do not generate (prometheus, egress, gateway, …) match nothing. A modification that
cannot apply (a JSON pointer that does not exist) is skipped and reported by `apply_all`'s return value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import inbound_key
from dpagent.controlplane.policies.meshproxypatch import jsonpatch, protos
from dpagent.controlplane.policies.meshproxypatch.api import (
    ADD,
    ADD_AFTER,
    ADD_BEFORE,
    ADD_FIRST,
    ADD_LAST,
    PATCH,
    REMOVE,
    Match,
    Modification,
    value_of,
)
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE, Resource
from dpagent.model.dataplane import Dataplane

HCM = "envoy.filters.network.http_connection_manager"
KIND = "MeshProxyPatch"


class _Run:
    """One modification on one proxy: what the kind functions need to match and to swap results in."""

    def __init__(self, rs: ResourceSet, ctx: MeshView, m: Modification,
                 tags: Mapping[str, Mapping[str, str]]) -> None:
        self.rs, self.ctx, self.m, self.tags = rs, ctx, m, tags
        self.key = json.dumps(asdict(m), sort_keys=True, default=str)

    def swap(self, entry: Entry, build: Callable[[Message], Message | None]) -> None:
        """Replace `entry` by build(its message) unless that is None (nothing changed); the result for a shared
        input is shared by every proxy applying the same modification to it."""
        if entry.shared is None:
            result = build(entry.message)
            if result is not None:
                self.rs.replace(entry, result)
            return
        source = entry.shared
        value = self.ctx.memo((KIND, entry.type_url, source.digest, self.key),
                              lambda: _resource(entry.name, entry.type_url, build(source.message)))
        if value is not None:
            self.rs.replace(entry, value)


def _resource(name: str, type_url: str, message: Message | None) -> Resource | None:
    return None if message is None else Resource(name, message, type_url)


def apply_all(rs: ResourceSet, ctx: MeshView, dp: Dataplane, mods: tuple[Modification, ...]) -> list[str]:
    """Apply every modification in order; the problems of those that could not apply."""
    tags = {inbound_key(dp, ib): ib.tags for ib in dp.networking.inbound}
    problems = []
    for i, m in enumerate(mods):
        try:
            _KINDS[m.kind](_Run(rs, ctx, m, tags))
        except (ValueError, jsonpatch.PatchError) as e:
            problems.append(f"appendModifications[{i}] ({m.kind} {m.operation}): {e}")
    return problems


def _origin_ok(entry: Entry, match: Match) -> bool:
    return match.origin is None or entry.origin == match.origin


def _tags_ok(entry: Entry, want: Mapping[str, str], tags: Mapping[str, Mapping[str, str]]) -> bool:
    if not want:
        return True
    have = tags.get(entry.inbound, {}) if entry.inbound else {}
    return all(have.get(k) == v for k, v in want.items())


def patched(msg: Message, m: Modification) -> Message:
    """A patched copy of `msg`: protobuf merge of `value`, or JSON patches on its protojson form."""
    if m.json_patches:
        return protos.parse_into(jsonpatch.apply(protos.to_json(msg), m.json_patches), msg)
    out = type(msg)()
    out.CopyFrom(msg)
    out.MergeFrom(protos.parse_into(dict(value_of(m.value)), msg))
    return out


def _resources(type_url: str) -> Callable[[_Run], None]:
    def run(r: _Run) -> None:
        rs, m, tags = r.rs, r.m, r.tags
        if m.operation == ADD:
            msg = protos.parse(m.kind, dict(value_of(m.value)))
            name = msg.name  # type: ignore[attr-defined]
            existing = rs.get(type_url, name)
            if existing is not None:  # Kuma: Add replaces a resource of the same name
                rs.replace(existing, msg)
            else:
                rs.add(type_url, name, msg, Origin.USER)
            return
        for e in list(rs.entries(type_url)):
            if not _origin_ok(e, m.match) or (m.match.name is not None and e.name != m.match.name):
                continue
            if not _tags_ok(e, m.match.tags, tags):
                continue
            if m.operation == REMOVE:
                rs.remove(e)
            elif m.operation == PATCH:
                r.swap(e, lambda msg: patched(msg, m))
    return run


def _virtual_hosts(r: _Run) -> None:
    m = r.m
    for e in list(r.rs.entries(ROUTE)):
        if not _origin_ok(e, m.match):
            continue
        if m.match.route_configuration_name is not None and e.name != m.match.route_configuration_name:
            continue
        r.swap(e, lambda msg: _edit_route(msg, m))


def _edit_route(msg: Message, m: Modification) -> Message | None:
    new = route_pb2.RouteConfiguration()
    new.CopyFrom(msg)
    if m.operation == ADD:
        new.virtual_hosts.append(protos.parse(m.kind, dict(value_of(m.value))))  # type: ignore[arg-type]
        return new
    keep = []
    for vh in new.virtual_hosts:
        if m.match.name is not None and vh.name != m.match.name:
            keep.append(vh)
        elif m.operation == PATCH:
            keep.append(patched(vh, m))
    if [vh.SerializeToString() for vh in keep] == [vh.SerializeToString() for vh in new.virtual_hosts]:
        return None
    del new.virtual_hosts[:]
    new.virtual_hosts.extend(keep)
    return new


def _listeners(r: _Run) -> Iterator[Entry]:
    rs, m, tags = r.rs, r.m, r.tags
    for e in list(rs.entries(LISTENER)):
        if not _origin_ok(e, m.match):
            continue
        if m.match.listener_name is not None and e.name != m.match.listener_name:
            continue
        if _tags_ok(e, m.match.tags, tags):
            yield e


def _chains(listener: Any) -> list[Any]:
    out = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        out.append(listener.default_filter_chain)
    return out


def _edit_list(items: list[Message], m: Modification) -> list[Message] | None:
    """The new filter list after `m`, or None when it changes nothing (the shared resource stays shared)."""
    op, name = m.operation, m.match.name
    if op in (ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER):
        new = protos.parse(m.kind, dict(value_of(m.value)))
        if op == ADD_FIRST:
            return [new, *items]
        if op == ADD_LAST:
            return [*items, new]
        at = next((i for i, f in enumerate(items) if f.name == name), None)  # type: ignore[attr-defined]
        if at is None:
            return None
        at += 1 if op == ADD_AFTER else 0
        return [*items[:at], new, *items[at:]]
    chosen = [name is None or f.name == name for f in items]  # type: ignore[attr-defined]
    if not any(chosen):
        return None
    if op == REMOVE:
        return [f for f, c in zip(items, chosen, strict=True) if not c]
    return [_patch_filter(f, m) if c else f for f, c in zip(items, chosen, strict=True)]


def _patch_filter(f: Message, m: Modification) -> Message:
    """A filter's Patch works on its typed config (Kuma's docs patch `/streamIdleTimeout` of the HCM)."""
    out = type(f)()
    out.CopyFrom(f)
    if m.json_patches:
        inner = _unpack(out.typed_config)  # type: ignore[attr-defined]
        out.typed_config.Pack(patched(inner, m))  # type: ignore[attr-defined]
        return out
    value = protos.parse(m.kind, dict(value_of(m.value)))
    if value.name:  # type: ignore[attr-defined]
        out.name = value.name  # type: ignore[attr-defined]
    if value.HasField("typed_config"):
        if out.typed_config.type_url == value.typed_config.type_url:  # type: ignore[attr-defined]
            inner = _unpack(out.typed_config)  # type: ignore[attr-defined]
            inner.MergeFrom(_unpack(value.typed_config))  # type: ignore[attr-defined]
            out.typed_config.Pack(inner)  # type: ignore[attr-defined]
        else:
            out.typed_config.CopyFrom(value.typed_config)  # type: ignore[attr-defined]
    return out


def _unpack(a: any_pb2.Any) -> Message:
    from google.protobuf import symbol_database

    protos.load_types({"@type": a.type_url})
    cls = symbol_database.Default().GetSymbol(a.type_url.rsplit("/", 1)[-1])
    msg = cls()
    a.Unpack(msg)
    return msg


def _network_filters(r: _Run) -> None:
    for e in _listeners(r):
        r.swap(e, lambda msg: _edit_network_filters(msg, r.m))


def _edit_network_filters(msg: Message, m: Modification) -> Message | None:
    new = type(msg)()
    new.CopyFrom(msg)
    changed = False
    for chain in _chains(new):
        out = _edit_list(list(chain.filters), m)
        if out is not None:
            del chain.filters[:]
            chain.filters.extend(out)
            changed = True
    return new if changed else None


def _http_filters(r: _Run) -> None:
    for e in _listeners(r):
        r.swap(e, lambda msg: _edit_http_filters(msg, r.m))


def _edit_http_filters(msg: Message, m: Modification) -> Message | None:
    new = type(msg)()
    new.CopyFrom(msg)
    changed = False
    for chain in _chains(new):
        for f in chain.filters:
            if f.name != HCM or not f.HasField("typed_config"):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            out = _edit_list(list(hcm.http_filters), m)
            if out is not None:
                del hcm.http_filters[:]
                hcm.http_filters.extend(out)
                f.typed_config.Pack(hcm)
                changed = True
    return new if changed else None


_KINDS: dict[str, Callable[[_Run], None]] = {
    "cluster": _resources(CLUSTER),
    "listener": _resources(LISTENER),
    "networkFilter": _network_filters,
    "httpFilter": _http_filters,
    "virtualHost": _virtual_hosts,
}
