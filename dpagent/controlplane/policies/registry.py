"""The explicit list of policy plugins, one line each, sorted by Kuma's order; a duplicate order fails at import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import match
from dpagent.controlplane.policies.meshtrafficpermission import MeshTrafficPermissionPlugin
from dpagent.model.dataplane import Dataplane

_PLUGINS: tuple[PolicyPlugin, ...] = (
    MeshTrafficPermissionPlugin(),  # order 1100
)


def _check(plugins: tuple[PolicyPlugin, ...]) -> tuple[PolicyPlugin, ...]:
    orders: dict[int, str] = {}
    for p in plugins:
        if p.order in orders:
            raise RuntimeError(f"policy plugins {orders[p.order]} and {p.kind} share order {p.order}")
        orders[p.order] = p.kind
    return tuple(sorted(plugins, key=lambda p: p.order))


PLUGINS = _check(_PLUGINS)
BY_KIND: Mapping[str, PolicyPlugin] = {p.kind: p for p in PLUGINS}


def plugin_for(kind: str) -> PolicyPlugin | None:
    return BY_KIND.get(kind)


def proxy_rules(ctx: MeshView, dp: Dataplane) -> dict[str, Rules]:
    """Every plugin's rules for one proxy, in plugin order; raw documents in ctx.policies are parsed first."""
    out: dict[str, Rules] = {}
    for plugin in PLUGINS:
        parsed: list[Any] = [plugin.parse(p) for p in ctx.policies.get(plugin.kind, ())]
        out[plugin.kind] = plugin.rules(ctx, dp, match(parsed, dp))
    return out
