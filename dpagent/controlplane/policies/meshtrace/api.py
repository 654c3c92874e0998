"""MeshTrace's spec: one tracing backend (Zipkin, Datadog or OpenTelemetry), sampling percents and span tags, typed,
with validation that reports every violation with its path. The envelope and targetRef are checked generically."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import msgspec

from dpagent.controlplane.policies.envelope import DEFAULT, Shape
from dpagent.controlplane.policies.meshhttproute.api_filters import check_percentage
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from dpagent.model.validation import HOST_RE, Violations, is_ip, join

KIND = "MeshTrace"
SHAPE = Shape(sections=(DEFAULT,), top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET))
ZIPKIN, DATADOG, OPENTELEMETRY = "Zipkin", "Datadog", "OpenTelemetry"
SECTION = {ZIPKIN: "zipkin", DATADOG: "datadog", OPENTELEMETRY: "openTelemetry"}
API_VERSIONS = ("httpJson", "httpProto")
OTEL_BACKEND_KIND = "MeshOpenTelemetryBackend"
OTLP_GRPC_PORT = 4317  # the OTLP/gRPC port, used when an endpoint names none


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class Zipkin(_S):
    url: str
    trace_id128bit: bool = msgspec.field(default=False, name="traceId128bit")
    api_version: str = "httpJson"
    shared_span_context: bool = True


class Datadog(_S):
    url: str
    split_service: bool = False


class OpenTelemetry(_S):
    endpoint: str | None = None
    backend_ref: dict[str, Any] | None = None


class Backend(_S):
    type: str
    zipkin: Zipkin | None = None
    datadog: Datadog | None = None
    open_telemetry: OpenTelemetry | None = None


class Sampling(_S):
    overall: int | str | None = None
    client: int | str | None = None
    random: int | str | None = None


class HeaderTag(_S):
    name: str
    default: str | None = None


class Tag(_S):
    name: str
    literal: str | None = None
    header: HeaderTag | None = None


class Conf(_S):
    backends: tuple[Backend, ...] = ()
    sampling: Sampling | None = None
    tags: tuple[Tag, ...] = ()


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def percent(raw: int | str) -> float:
    """A validated sampling value (a whole number or a decimal string) as Envoy's Percent value."""
    return float(Decimal(raw))


def otel_target(endpoint: str) -> tuple[str, int]:
    """host and port of an OpenTelemetry `endpoint`: `host:port` as Kuma documents it, a bare host (port 4317), or
    the same written as an http:// URL, which users copy from collector docs."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    return parts.hostname or "", parts.port or OTLP_GRPC_PORT


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("backends", "sampling", "tags"), path)
    backends = v.sequence(conf.get("backends"), join(path, "backends"))
    if len(backends) > 1:
        v.add(join(path, "backends"), "must hold at most 1 backend")
    for i, raw in enumerate(backends):
        _backend(v, raw, f"{join(path, 'backends')}[{i}]")
    sampling = v.mapping(conf.get("sampling"), join(path, "sampling"), required=False)
    if sampling is not None:
        sp = join(path, "sampling")
        v.unknown(sampling, ("overall", "client", "random"), sp)
        for key in ("overall", "client", "random"):
            if sampling.get(key) is not None:
                check_percentage(v, sampling[key], join(sp, key))
    tp = join(path, "tags")
    for i, raw in enumerate(v.sequence(conf.get("tags"), tp)):
        _tag(v, raw, f"{tp}[{i}]")


def _backend(v: Violations, raw: Any, path: str) -> None:
    typed = v.typed_block(raw, path, SECTION)
    if typed is not None:
        kind, body = typed
        {ZIPKIN: _zipkin, DATADOG: _datadog, OPENTELEMETRY: _otel}[kind](v, body, join(path, SECTION[kind]))


def _bool(v: Violations, m: Mapping[str, Any], key: str, path: str) -> None:
    if m.get(key) is not None and not isinstance(m[key], bool):
        v.add(join(path, key), "must be true or false")


def _zipkin(v: Violations, z: Mapping[str, Any], path: str) -> None:
    v.unknown(z, ("url", "traceId128bit", "apiVersion", "sharedSpanContext"), path)
    url = v.string(z.get("url"), join(path, "url"))
    if url is not None:
        problem = _url_problem(url)
        if problem:
            v.add(join(path, "url"), problem)
    if z.get("apiVersion") is not None and z["apiVersion"] not in API_VERSIONS:
        v.add(join(path, "apiVersion"), f"must be one of: {', '.join(API_VERSIONS)}")
    _bool(v, z, "traceId128bit", path)
    _bool(v, z, "sharedSpanContext", path)


def _url_problem(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be a valid URL with a valid port"
    if parts.scheme not in ("http", "https"):
        return "must be a valid http:// or https:// URL"
    host = parts.hostname or ""
    if not (is_ip(host) or HOST_RE.fullmatch(host)):
        return "must be a valid URL: the host is missing or is not a hostname or IP address"
    if port == 0:
        return "must name a port between 1 and 65535"
    return ""


def _datadog(v: Violations, d: Mapping[str, Any], path: str) -> None:
    v.unknown(d, ("url", "splitService"), path)
    url = v.string(d.get("url"), join(path, "url"))
    _bool(v, d, "splitService", path)
    if url is None:
        return
    up = join(path, "url")
    problem = _url_problem(url)
    if problem:
        v.add(up, problem)
        return
    parts = urlsplit(url)
    if parts.scheme != "http":
        v.add(up, "scheme must be http")
    if parts.port is None:
        v.add(up, "port must be defined (1-65535)")
    if parts.username is not None or parts.password is not None:
        v.add(up, "must not contain a user")
    if parts.path not in ("", "/"):
        v.add(up, "must not contain a path")
    if parts.query:
        v.add(up, "must not contain a query")
    if parts.fragment:
        v.add(up, "must not contain a fragment")


def _otel(v: Violations, o: Mapping[str, Any], path: str) -> None:
    v.unknown(o, ("endpoint", "backendRef"), path)
    endpoint, ref = o.get("endpoint"), o.get("backendRef")
    if (endpoint is None) == (ref is None):
        v.add(path, "must define exactly one of: endpoint, backendRef")
    if endpoint is not None and v.string(endpoint, join(path, "endpoint")) is not None:
        try:
            host, _ = otel_target(endpoint)
        except ValueError:
            host = ""
        if not (is_ip(host) or HOST_RE.fullmatch(host)):
            v.add(join(path, "endpoint"), "must be host:port (e.g. otel-collector:4317)")
    if ref is not None:
        m = v.mapping(ref, join(path, "backendRef"))
        if m is not None:
            rp = join(path, "backendRef")
            v.unknown(m, ("kind", "name", "namespace", "labels", "sectionName"), rp)
            if m.get("kind") != OTEL_BACKEND_KIND:
                v.add(join(rp, "kind"), f"must be {OTEL_BACKEND_KIND}")
            if m.get("name") is None and m.get("labels") is None:
                v.add(rp, "must define name or labels")


def _tag(v: Violations, raw: Any, path: str) -> None:
    t = v.mapping(raw, path)
    if t is None:
        return
    v.unknown(t, ("name", "literal", "header"), path)
    v.string(t.get("name"), join(path, "name"))
    literal, header = t.get("literal"), t.get("header")
    if literal is None and header is None:
        v.add(path, "must define either literal or header")
    elif literal is not None and header is not None:
        v.add(path, "must define only one of literal and header")
    if literal is not None and not isinstance(literal, str):
        v.add(join(path, "literal"), "must be a string")
    h = v.mapping(header, join(path, "header"), required=False)
    if h is not None:
        hp = join(path, "header")
        v.unknown(h, ("name", "default"), hp)
        v.string(h.get("name"), join(hp, "name"))
        if h.get("default") is not None and not isinstance(h["default"], str):
            v.add(join(hp, "default"), "must be a string")
