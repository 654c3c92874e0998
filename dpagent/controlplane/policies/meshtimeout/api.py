"""MeshTimeout's `default` conf: six optional durations (plus the HCM request-headers timeout), their validation
with every violation's path, the values Kuma fills in for a field a matching policy leaves unset, and the two
policies Kuma creates with every new mesh (reference kuma-policies.md §4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import FROM, RULES, TO, Shape
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_HTTP_ROUTE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from dpagent.durations import format_duration, parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshTimeout"
TOP = ("connectionTimeout", "idleTimeout", "http")
HTTP = ("requestTimeout", "streamIdleTimeout", "maxStreamDuration", "maxConnectionDuration", "requestHeadersTimeout")
# Kuma requires one of these four in an `http` block; requestHeadersTimeout alone is refused (Kuma's own quirk).
HTTP_REQUIRED = HTTP[:4]

SHAPE = Shape(sections=(TO, FROM, RULES),
              top_kinds=(MESH, MESH_SUBSET, DATAPLANE, MESH_SERVICE, MESH_SERVICE_SUBSET),
              to_kinds=(MESH, MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE, MESH_HTTP_ROUTE),
              from_kinds=(MESH,),
              required_one_of=(TO, FROM, RULES), rules_alone=True)


class Http(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    request_timeout: float | None = None
    stream_idle_timeout: float | None = None
    max_stream_duration: float | None = None
    max_connection_duration: float | None = None
    request_headers_timeout: float | None = None


class Timeouts(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """Seconds; None = unset. After `effective()` every field but the HCM request-headers one is set, and 0 means
    "no limit" for every field except connectionTimeout."""

    connection_timeout: float | None = None
    idle_timeout: float | None = None
    http: Http | None = None


# What Kuma uses for a field that a matching policy leaves unset (its core/defaults consts).
DEFAULTS = Timeouts(5.0, 3600.0, Http(15.0, 1800.0, 0.0, 0.0, None))


def _seconds(raw: Any) -> float | None:
    return None if raw is None else parse_duration(raw)


def to_timeouts(conf: Mapping[str, Any]) -> Timeouts:
    """A merged (already validated) conf → seconds, unset fields left None."""
    http = conf.get("http")
    return Timeouts(_seconds(conf.get("connectionTimeout")), _seconds(conf.get("idleTimeout")),
                    None if not isinstance(http, Mapping) else Http(*(_seconds(http.get(k)) for k in HTTP)))


def effective(t: Timeouts) -> Timeouts:
    """Unset fields take Kuma's defaults."""
    h, d = t.http or Http(), DEFAULTS.http or Http()

    def pick(a: float | None, b: float | None) -> float | None:
        return a if a is not None else b

    return Timeouts(pick(t.connection_timeout, DEFAULTS.connection_timeout),
                    pick(t.idle_timeout, DEFAULTS.idle_timeout),
                    Http(*(pick(getattr(h, f), getattr(d, f)) for f in Http.__struct_fields__)))


def view(t: Timeouts) -> dict[str, Any]:
    """Durations as text, the way a user wrote them (`inspect`)."""
    def fmt(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fmt(v) for k, v in x.items()}
        return format_duration(x) if isinstance(x, float) else x

    return fmt(msgspec.to_builtins(t))  # type: ignore[no-any-return]


def _duration(v: Violations, raw: Any, path: str, positive: bool) -> None:
    if raw is None:
        return
    if not isinstance(raw, str):
        v.add(path, "must be a duration string such as 5s, 1m or 1h")
        return
    try:
        value = parse_duration(raw)
    except ValueError as exc:  # negative durations land here too
        v.add(path, str(exc))
        return
    if positive and value <= 0:
        v.add(path, "must be greater than zero")


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, TOP, path)
    if all(conf.get(k) is None for k in TOP):
        v.add(path, "must define at least one of: " + ", ".join(TOP))
    _duration(v, conf.get("connectionTimeout"), join(path, "connectionTimeout"), positive=True)
    _duration(v, conf.get("idleTimeout"), join(path, "idleTimeout"), positive=False)
    http = v.mapping(conf.get("http"), join(path, "http"), required=False)
    if http is None:
        return
    hp = join(path, "http")
    v.unknown(http, HTTP, hp)
    if all(http.get(k) is None for k in HTTP_REQUIRED):
        v.add(hp, "must define at least one of: " + ", ".join(HTTP_REQUIRED))
    for key in HTTP:
        _duration(v, http.get(key), join(hp, key), positive=False)


def initial_policies(mesh: str) -> list[dict[str, Any]]:
    """The two MeshTimeouts Kuma creates with a mesh: sidecars (inbound limits larger than outbound ones, or off)
    and gateways (the gateway one selects no dpagent proxy: every dpagent proxy is a sidecar)."""
    def policy(name: str, proxy: str, to: dict[str, Any], from_: dict[str, Any]) -> dict[str, Any]:
        return {"type": KIND, "mesh": mesh, "name": f"{name}-{mesh}",
                "spec": {"targetRef": {"kind": MESH, "proxyTypes": [proxy]},
                         "from": [{"targetRef": {"kind": MESH}, "default": from_}],
                         "to": [{"targetRef": {"kind": MESH}, "default": to}]}}

    return [
        policy("mesh-timeout-all", "Sidecar",
               {"connectionTimeout": "5s", "idleTimeout": "1h",
                "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}},
               {"connectionTimeout": "10s", "idleTimeout": "2h",
                "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}}),
        policy("mesh-gateways-timeout-all", "Gateway",
               {"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}},
               {"idleTimeout": "5m", "http": {"streamIdleTimeout": "5s", "requestHeadersTimeout": "500ms"}}),
    ]
