"""Matched MeshAccessLogs → the backends of each destination and each inbound.

Outbound (`to[]`): the entries that concern a destination are merged lowest priority first, and lists are replaced
whole, so a more specific policy *replaces* the backends (`backends: []` switches logging off). Inbound (`from[]`,
which acts as catch-all `rules[]` for this kind, and `rules[]`): as in Kuma 2.14 nothing is merged, every entry of
every matching policy adds its own backends. A backend this CP cannot resolve (a MeshOpenTelemetryBackend
reference) is dropped with a warning that `inspect` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Item, Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshaccesslog.api import (
    KIND,
    OTEL,
    SHAPE,
    Backend,
    parse_conf,
    validate_conf,
)
from dpagent.controlplane.policies.targetref import MESH, destination_of
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 600
Backends = tuple[Backend, ...]


def _usable(backends: Iterable[Backend]) -> Backends:
    return tuple(b for b in backends if not (b.type == OTEL and b.open_telemetry is not None
                                             and b.open_telemetry.backend_ref is not None))


def _unresolved(items: Iterable[Item]) -> list[str]:
    out = []
    for it in items:
        for i, b in enumerate(parse_conf(it.conf).backends):
            if b.type == OTEL and b.open_telemetry is not None and b.open_telemetry.backend_ref is not None:
                out.append(f"{KIND} {it.policy}: backends[{i}] openTelemetry.backendRef "
                           f"({b.open_telemetry.backend_ref.kind}) cannot be resolved: this control plane has no "
                           "MeshOpenTelemetryBackend resources; use openTelemetry.endpoint. The backend is ignored")
    return sorted(set(out))


@dataclass(frozen=True)
class AccessLogRules(Rules):
    """`to`: matched to[] items, lowest priority first (a destination's backends are merged on demand); `inbounds`:
    the backends of each inbound key that some policy reaches."""

    to: tuple[Item, ...] = ()
    inbounds: Mapping[str, Backends] = field(default_factory=dict)

    def _items(self, service: str | None) -> list[Item]:
        """`service` None: traffic leaving the mesh (passthrough), which only Mesh entries cover."""
        return [i for i in self.to if i.target_ref is not None and (
            i.target_ref.kind == MESH or (service is not None and destination_of(i.target_ref) == service))]

    def outbound(self, service: str | None) -> Backends | None:
        """None when no policy reaches the destination (the listener stays untouched)."""
        items = self._items(service)
        return _usable(parse_conf(merge_confs(i.conf for i in items)).backends) if items else None

    def outbound_conf(self, service: str) -> Any:
        backends = self.outbound(service)
        return None if backends is None else {"backends": list(msgspec.to_builtins(backends))}

    def inbound_conf(self, key: str) -> Any:
        backends = self.inbounds.get(key)
        return None if backends is None else {"backends": list(msgspec.to_builtins(backends))}


class MeshAccessLogPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshaccesslogs"
    aliases = ("mal",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> AccessLogRules:
        inbounds: dict[str, Backends] = {}
        seen: list[Item] = list(matched.to)
        for key, ib in matched.inbounds.items():
            items = sorted((*ib.from_, *ib.rules), key=lambda i: (i.rank, i.index))
            if items:
                seen.extend(items)
                inbounds[key] = _usable(b for i in items for b in parse_conf(i.conf).backends)
        return AccessLogRules(warnings=tuple(_unresolved(seen)), to=matched.to, inbounds=inbounds)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshaccesslog import xds  # Envoy protos only when generating

        if isinstance(rules, AccessLogRules) and (rules.to or rules.inbounds):
            xds.configure(rs, ctx, dp, rules)
