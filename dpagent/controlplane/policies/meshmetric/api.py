"""MeshMetric's spec (`spec.default`): sidecar profiles, the applications the agent scrapes beside Envoy, and the
backends (Prometheus pull, OpenTelemetry push), typed, with validation that reports every violation's path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import DEFAULT, Shape
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from dpagent.durations import parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshMetric"
SHAPE = Shape(sections=(DEFAULT,), top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET))

PROFILES = ("All", "Basic", "None")
SELECTOR_TYPES = ("Prefix", "Regex", "Exact", "Contains")
PROMETHEUS, OPEN_TELEMETRY = "Prometheus", "OpenTelemetry"
TLS_MODES = ("Disabled", "ProvidedTLS", "ActiveMTLSBackend")
DEFAULT_PORT = 5670
DEFAULT_PATH = "/metrics"
DEFAULT_CLIENT_ID = "_kuma-default-client"  # what Kuma's MADS matches a backend without clientId against
DEFAULT_REFRESH = "1m"


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class Profile(_S):
    name: str


class Selector(_S):
    type: str
    match: str


class Profiles(_S):
    append_profiles: tuple[Profile, ...] = ()
    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()


class Sidecar(_S):
    profiles: Profiles | None = None
    include_unused: bool = False


class Application(_S):
    port: int
    name: str = ""
    path: str = DEFAULT_PATH
    address: str = ""


class Tls(_S):
    mode: str = "Disabled"


class Prometheus(_S):
    port: int = DEFAULT_PORT
    path: str = DEFAULT_PATH
    client_id: str = ""
    tls: Tls | None = None

    @property
    def tls_mode(self) -> str:
        return self.tls.mode if self.tls is not None else "Disabled"


class BackendRef(_S):
    kind: str = ""
    name: str = ""
    port: int | None = None


class OpenTelemetry(_S):
    endpoint: str = ""
    backend_ref: BackendRef | None = None
    refresh_interval: str = DEFAULT_REFRESH


class Backend(_S):
    type: str
    prometheus: Prometheus | None = None
    open_telemetry: OpenTelemetry | None = None


class Conf(_S):
    sidecar: Sidecar | None = None
    applications: tuple[Application, ...] = ()
    backends: tuple[Backend, ...] = ()


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("sidecar", "applications", "backends"), path)
    sidecar = v.mapping(conf.get("sidecar"), join(path, "sidecar"), required=False)
    if sidecar is not None:
        _sidecar(v, sidecar, join(path, "sidecar"))
    ap = join(path, "applications")
    for i, raw in enumerate(v.sequence(conf.get("applications"), ap)):
        app = v.mapping(raw, f"{ap}[{i}]")
        if app is not None:
            p = f"{ap}[{i}]"
            v.unknown(app, ("name", "path", "address", "port"), p)
            v.port(app.get("port"), join(p, "port"))
            v.string(app.get("name"), join(p, "name"), required=False)
            _path(v, app.get("path"), join(p, "path"))
            if app.get("address") is not None:
                v.ip(app.get("address"), join(p, "address"))
    bp = join(path, "backends")
    for i, raw in enumerate(v.sequence(conf.get("backends"), bp)):
        _backend(v, raw, f"{bp}[{i}]")
    _unique_prometheus_ports(v, conf.get("backends"), bp)


def _sidecar(v: Violations, sidecar: Mapping[str, Any], path: str) -> None:
    v.unknown(sidecar, ("profiles", "includeUnused"), path)
    if sidecar.get("includeUnused") is not None and not isinstance(sidecar["includeUnused"], bool):
        v.add(join(path, "includeUnused"), "must be true or false")
    profiles = v.mapping(sidecar.get("profiles"), join(path, "profiles"), required=False)
    if profiles is None:
        return
    pp = join(path, "profiles")
    v.unknown(profiles, ("appendProfiles", "include", "exclude"), pp)
    ap = join(pp, "appendProfiles")
    for i, raw in enumerate(v.sequence(profiles.get("appendProfiles"), ap)):
        item = v.mapping(raw, f"{ap}[{i}]")
        if item is not None:
            v.unknown(item, ("name",), f"{ap}[{i}]")
            if item.get("name") not in PROFILES:
                v.add(f"{ap}[{i}].name", f"must be one of {', '.join(PROFILES)}")
    for key in ("include", "exclude"):
        sp = join(pp, key)
        for i, raw in enumerate(v.sequence(profiles.get(key), sp)):
            item = v.mapping(raw, f"{sp}[{i}]")
            if item is not None:
                _selector(v, item, f"{sp}[{i}]")


def _selector(v: Violations, item: Mapping[str, Any], path: str) -> None:
    v.unknown(item, ("type", "match"), path)
    kind = item.get("type")
    if kind not in SELECTOR_TYPES:
        v.add(join(path, "type"), f"must be one of {', '.join(SELECTOR_TYPES)}")
    match = v.string(item.get("match"), join(path, "match"))
    if match is not None and kind == "Regex":
        try:
            re.compile(match)
        except re.error as e:
            v.add(join(path, "match"), f"must be a valid regular expression: {e}")
    elif match == "":
        v.add(join(path, "match"), "must not be empty")


def _path(v: Violations, raw: Any, path: str) -> None:
    value = v.string(raw, path, required=False)
    if value is not None and not value.startswith("/"):
        v.add(path, "must start with /")


def _backend(v: Violations, raw: Any, path: str) -> None:
    typed = v.typed_block(raw, path, {PROMETHEUS: "prometheus", OPEN_TELEMETRY: "openTelemetry"})
    if typed is None:
        return
    kind, block = typed
    prom = block if kind == PROMETHEUS else None
    otel = block if kind == OPEN_TELEMETRY else None
    if prom is not None:
        pp = join(path, "prometheus")
        v.unknown(prom, ("port", "path", "clientId", "tls"), pp)
        v.port(prom.get("port"), join(pp, "port"), required=False)
        _path(v, prom.get("path"), join(pp, "path"))
        v.string(prom.get("clientId"), join(pp, "clientId"), required=False)
        tls = v.mapping(prom.get("tls"), join(pp, "tls"), required=False)
        if tls is not None:
            v.unknown(tls, ("mode",), join(pp, "tls"))
            if tls.get("mode", "Disabled") not in TLS_MODES:
                v.add(join(pp, "tls.mode"), f"must be one of {', '.join(TLS_MODES)}")
    if otel is not None:
        op = join(path, "openTelemetry")
        v.unknown(otel, ("endpoint", "backendRef", "refreshInterval"), op)
        if otel.get("endpoint") is None and otel.get("backendRef") is None:
            v.add(op, "must define endpoint or backendRef")
        if otel.get("endpoint") is not None and otel.get("backendRef") is not None:
            v.add(op, "must define only one of endpoint and backendRef")
        if otel.get("endpoint") is not None:
            _host_port(v, otel.get("endpoint"), join(op, "endpoint"))
        ref = v.mapping(otel.get("backendRef"), join(op, "backendRef"), required=False)
        if ref is not None:
            v.unknown(ref, ("kind", "name", "port", "labels", "namespace"), join(op, "backendRef"))
            if ref.get("kind") != "MeshExternalService":
                v.add(join(op, "backendRef.kind"), "must be MeshExternalService")
        if otel.get("refreshInterval") is not None:
            try:
                if parse_duration(otel["refreshInterval"]) <= 0:
                    v.add(join(op, "refreshInterval"), "must be greater than 0")
            except ValueError as e:
                v.add(join(op, "refreshInterval"), str(e))


def _host_port(v: Violations, raw: Any, path: str) -> None:
    value = v.string(raw, path)
    if value is None:
        return
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        v.add(path, f"{value!r} must be host:port (e.g. otel-collector:4317)")


def _unique_prometheus_ports(v: Violations, backends: Any, path: str) -> None:
    """Two Prometheus backends on one port would ask Envoy for two listeners on one address."""
    if not isinstance(backends, list):
        return
    seen: dict[int, int] = {}
    for i, b in enumerate(backends):
        prom = b.get("prometheus") if isinstance(b, Mapping) else None
        if not isinstance(prom, Mapping):
            continue
        port = prom.get("port", DEFAULT_PORT)
        if isinstance(port, int) and port in seen:
            v.add(f"{path}[{i}].prometheus.port", f"is already used by {path}[{seen[port]}]")
        elif isinstance(port, int):
            seen[port] = i
