"""Which scrape targets a mesh has: one per (dataplane, Prometheus backend of its effective MeshMetric), computed
once per mesh state. Pure; served by controlplane/monitoring.py as Prometheus HTTP SD and as Kuma's MADS."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import match
from dpagent.controlplane.policies.meshmetric.api import KIND
from dpagent.controlplane.policies.meshmetric.plugin import MeshMetricPlugin, MmRules

ZONE_TAG = "kuma.io/zone"
_PLUGIN = MeshMetricPlugin()


@dataclass(frozen=True)
class Target:
    mesh: str
    dataplane: str
    service: str
    zone: str
    address: str  # host:port of the Prometheus listener
    path: str
    client_id: str  # "" serves every Prometheus
    tags: Mapping[str, str] = field(default_factory=dict)


def sanitize_label(name: str) -> str:
    """Prometheus label names allow [a-zA-Z0-9_] (Kuma's tags hold dots and slashes: `kuma.io/service`)."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return f"_{out}" if out[:1].isdigit() else out


def mesh_targets(ctx: MeshView, parsed: Mapping[str, list[object]]) -> tuple[Target, ...]:
    """Every target of the mesh, memoised on the (immutable) mesh context."""
    return ctx.memo(("meshmetric-targets",), lambda: _targets(ctx, parsed))  # type: ignore[no-any-return]


def _targets(ctx: MeshView, parsed: Mapping[str, list[object]]) -> tuple[Target, ...]:
    policies = parsed.get(KIND, [])
    if not policies:
        return ()
    out: list[Target] = []
    cache = getattr(ctx, "match_cache", None)
    for dp in ctx.dataplanes:
        rules = _PLUGIN.rules(ctx, dp, match(KIND, policies, dp, cache=cache))  # type: ignore[arg-type]
        if not isinstance(rules, MmRules):
            continue
        host = f"[{dp.networking.address}]" if ":" in dp.networking.address else dp.networking.address
        tags = {k: v for ib in dp.networking.inbound for k, v in sorted(ib.tags.items())}
        for prom in rules.prometheus():
            out.append(Target(mesh=dp.mesh, dataplane=dp.name, service=(dp.services or [""])[0],
                              zone=tags.get(ZONE_TAG, ""), address=f"{host}:{prom.port}", path=prom.path,
                              client_id=prom.client_id, tags=tags))
    return tuple(sorted(out, key=lambda t: (t.mesh, t.dataplane, t.address)))
