"""Matched MeshTraces → this proxy's tracing: the merged `default` (Kuma merges single-item policies least specific
first, and lists such as `backends` and `tags` are replaced whole), the service spans are reported under, and the
mesh and zone Kuma stamps on every span. No backend means no tracing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshtrace.api import (
    KIND,
    OPENTELEMETRY,
    SHAPE,
    Backend,
    Conf,
    parse_conf,
    validate_conf,
)
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 700
ZONE_TAG = "kuma.io/zone"


@dataclass(frozen=True)
class TraceRules(Rules):
    conf: Conf | None = None  # the effective conf when a usable backend is set
    service: str = ""  # the name spans are reported under: the proxy's first service, as its bootstrap's node.cluster
    mesh: str = ""
    zone: str = ""

    @property
    def backend(self) -> Backend | None:
        return self.conf.backends[0] if self.conf is not None and self.conf.backends else None

    def inbound_conf(self, key: str) -> Any:
        return self.conf  # one conf for every listener of the proxy


def service_name(dp: Dataplane) -> str:
    """The same name the bootstrap gives Envoy's node.cluster, which Zipkin reports as the local service, so every
    backend names a proxy alike."""
    services = dp.services or [dp.name]
    return services[0]


def _zone(dp: Dataplane) -> str:
    return next((ib.tags[ZONE_TAG] for ib in dp.networking.inbound if ib.tags.get(ZONE_TAG)), "")


class MeshTracePlugin(PolicyPlugin):
    kind = KIND
    plural = "meshtraces"
    aliases = ("mtr",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> TraceRules:
        if not matched.policies:
            return TraceRules()
        conf = parse_conf(matched.default)
        backend = conf.backends[0] if conf.backends else None
        if backend is None:
            return TraceRules()
        otel = backend.open_telemetry
        if backend.type == OPENTELEMETRY and otel is not None and otel.endpoint is None:
            return TraceRules(warnings=(f"{KIND} {', '.join(matched.policies)}: openTelemetry.backendRef "
                                        "(MeshOpenTelemetryBackend) is not supported; use endpoint. Tracing is off",))
        return TraceRules(conf=conf, service=service_name(dp), mesh=dp.mesh, zone=_zone(dp))

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshtrace import xds  # Envoy protos only when generating

        if isinstance(rules, TraceRules) and rules.conf is not None:
            xds.configure(rs, ctx, rules)
