"""Matched MeshMetrics → one proxy's effective metrics conf.

A single-item policy: every selecting policy's `default` is folded least → most specific by the generic merge, so
`backends` and `applications` (lists) are replaced by a more specific policy while `appendProfiles` accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshmetric.api import (
    KIND,
    OPEN_TELEMETRY,
    PROMETHEUS,
    SHAPE,
    Conf,
    Prometheus,
    parse_conf,
    validate_conf,
)
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1500


@dataclass(frozen=True)
class MmRules(Rules):
    conf: Conf | None = None

    def prometheus(self) -> list[Prometheus]:
        """The Prometheus backends this proxy serves (TLS mode Disabled only; the others are warned about)."""
        if self.conf is None:
            return []
        return [b.prometheus or Prometheus() for b in self.conf.backends
                if b.type == PROMETHEUS and (b.prometheus or Prometheus()).tls_mode == "Disabled"]

    def inbound_conf(self, key: str) -> Any:
        return None


class MeshMetricPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshmetrics"
    aliases = ("mm",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MmRules:
        if not matched.policies:
            return MmRules()
        conf = parse_conf(matched.default)
        warnings = []
        for i, b in enumerate(conf.backends):
            if b.type == PROMETHEUS and (b.prometheus or Prometheus()).tls_mode != "Disabled":
                warnings.append(f"MeshMetric backends[{i}]: TLS mode {b.prometheus.tls_mode!r} is not "  # type: ignore[union-attr]
                                "supported by dpagent yet; this backend is not served")
            if b.type == OPEN_TELEMETRY and b.open_telemetry is not None and not b.open_telemetry.endpoint:
                warnings.append(f"MeshMetric backends[{i}]: openTelemetry.backendRef (MeshExternalService) cannot be "
                                "resolved by dpagent yet; use endpoint: host:port. Nothing is pushed")
        return MmRules(warnings=tuple(warnings), conf=conf)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshmetric import xds  # Envoy protos only when generating

        if isinstance(rules, MmRules) and rules.conf is not None:
            xds.configure(rs, ctx, dp, rules.conf, rules.prometheus())
