"""Matched MeshRetries → the effective retry conf per destination service of one proxy (JSON merge patch of every
relevant `to[]` item, lowest priority first: `Mesh` items and the MeshService items naming that service).

The result depends only on the matched items, so it is memoised per mesh change by their identity: every proxy
with the same MeshRetries shares one Rules value, and the built route configs are shared by (service, conf).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshretry.api import KIND, SHAPE, Conf, to_conf, validate_conf
from dpagent.controlplane.policies.meshroute.refs import names_legacy_service
from dpagent.controlplane.policies.targetref import MESH, MESH_EXTERNAL_SERVICE, MESH_SERVICE, extsvc_key
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1400
DEFAULT_NAME = "mesh-retry-all"


@dataclass(frozen=True)
class RetryRules(Rules):
    """`items`: (legacy service the item names, or None for `Mesh`; its conf), lowest priority first."""

    items: tuple[tuple[str | None, Mapping[str, Any]], ...] = ()
    _cache: dict[str, tuple[str, Conf] | None] = field(default_factory=dict, compare=False, repr=False)

    def effective(self, service: str) -> tuple[str, Conf] | None:
        """(the merged conf as canonical JSON, the typed conf) toward `service`, or None when nothing applies.
        The JSON is the sharing key: equal confs give equal keys whichever policies they came from."""
        if service not in self._cache:
            confs = [c for s, c in self.items if s is None or s == service]
            merged = merge_confs(confs) if confs else None
            self._cache[service] = None if not merged else (json.dumps(merged, sort_keys=True), to_conf(merged))
        return self._cache[service]

    def outbound_conf(self, service: str) -> Any:
        eff = self.effective(service)
        return None if eff is None else json.loads(eff[0])


def _rules(matched: Matched) -> RetryRules:
    items: list[tuple[str | None, Mapping[str, Any]]] = []
    warnings: list[str] = []
    for item in matched.to:
        ref = item.target_ref
        if ref is None:
            continue
        if ref.kind == MESH:
            items.append((None, item.conf))
        elif ref.kind == MESH_SERVICE and ref.name and names_legacy_service(ref, ref.name):
            items.append((ref.name, item.conf))
        elif ref.kind == MESH_EXTERNAL_SERVICE and ref.name:
            items.append((extsvc_key(ref.name), item.conf))
        else:
            warnings.append(f"{KIND} {item.policy}: to[{item.index}].targetRef {ref.kind} is accepted but not "
                            "applied yet (this control plane applies Mesh, MeshService and MeshExternalService by "
                            "name)")
    return RetryRules(warnings=tuple(dict.fromkeys(warnings)), items=tuple(items))


class MeshRetryPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshretries"
    aliases = ("mr",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Mapping[str, Any], path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> RetryRules:
        if not matched.to:
            return RetryRules()
        key = (KIND, "rules", tuple((i.policy, i.index) for i in matched.to))
        return ctx.memo(key, lambda: _rules(matched))  # type: ignore[no-any-return]

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshretry import xds

        if isinstance(rules, RetryRules) and rules.items:
            xds.configure(rs, ctx, rules)

    def initial_policies(self, mesh: str) -> list[dict[str, Any]]:
        """Kuma's `mesh-retry-all-<mesh>` (§1.9, §5), created with a new mesh unless the Mesh skips it."""
        per_protocol = {"numRetries": 5, "perTryTimeout": "16s",
                        "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}
        return [{"type": KIND, "mesh": mesh, "name": f"{DEFAULT_NAME}-{mesh}", "spec": {
            "targetRef": {"kind": MESH},
            "to": [{"targetRef": {"kind": MESH}, "default": {
                "tcp": {"maxConnectAttempt": 5}, "http": dict(per_protocol), "grpc": dict(per_protocol)}}]}}]
