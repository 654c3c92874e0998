"""MeshAccessLog's `default` conf: a list of backends (File, Tcp, OpenTelemetry), each with an optional format,
typed, and validated with every violation's path (reference kuma-policies.md §11). Envelope, targetRefs and
sections are generic (envelope.py)."""

from __future__ import annotations

import json
import re
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
from dpagent.model.validation import HOST_RE, Violations, is_ip, join

KIND = "MeshAccessLog"
SHAPE = Shape(sections=(TO, FROM, RULES),
              top_kinds=(MESH, MESH_SUBSET, DATAPLANE, MESH_SERVICE, MESH_SERVICE_SUBSET),
              to_kinds=(MESH, MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE, MESH_HTTP_ROUTE),
              from_kinds=(MESH,),
              required_one_of=(TO, FROM, RULES), rules_alone=True)

FILE, TCP, OTEL = "File", "Tcp", "OpenTelemetry"
_BLOCK = {FILE: "file", TCP: "tcp", OTEL: "openTelemetry"}
PLAIN, JSON = "Plain", "Json"
OTEL_BACKEND_KIND = "MeshOpenTelemetryBackend"
ATTRIBUTE_KEY_RE = re.compile(r"^[a-z]([a-z0-9]|[._][a-z0-9])*$")
# The keys of an OpenTelemetry AnyValue as JSON (opentelemetry-proto common.proto), what `body` may hold.
ANY_VALUE_KEYS = ("stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class JsonField(_S):
    key: str
    value: str


class Format(_S):
    type: str
    plain: str = ""
    json: tuple[JsonField, ...] = ()
    omit_empty_values: bool = False


class FileBackend(_S):
    path: str
    format: Format | None = None


class TcpBackend(_S):
    address: str
    format: Format | None = None


class Attribute(_S):
    key: str
    value: str


class BackendRef(_S):
    kind: str
    name: str = ""
    labels: dict[str, str] = {}


class OtelBackend(_S):
    endpoint: str = ""
    backend_ref: BackendRef | None = None
    attributes: tuple[Attribute, ...] = ()
    body: Any = None  # an OTel AnyValue as JSON; None = the default format as a string


class Backend(_S):
    type: str
    file: FileBackend | None = None
    tcp: TcpBackend | None = None
    open_telemetry: OtelBackend | None = None


class Conf(_S):
    backends: tuple[Backend, ...] = ()


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    """A validated (and possibly merged) conf → typed backends."""
    return msgspec.convert(conf, Conf)


# ---- validation ------------------------------------------------------------------------------------------------


def split_host_port(raw: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` → (host, port); None when it is not one."""
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
        if not sep or ":" not in host:
            return None
    else:
        host, sep, port = raw.rpartition(":")
        if not sep or ":" in host:
            return None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if not (is_ip(host) or HOST_RE.fullmatch(host)):
        return None
    return host, int(port)


def _host_port(v: Violations, raw: Any, path: str) -> None:
    s = v.string(raw, path)
    if s is not None and split_host_port(s) is None:
        v.add(path, f"{s!r} must be host:port (an IP address or hostname, and a port in [1, 65535])")


def _absolute_path(v: Violations, raw: Any, path: str) -> None:
    s = v.string(raw, path)
    if s is None:
        return
    windows = re.fullmatch(r"[A-Za-z]:[\\/].*", s) is not None
    if "\x00" in s or not (s.startswith("/") or windows):
        v.add(path, f"{s!r} must be an absolute file path")


def validate_format(v: Violations, raw: Any, path: str) -> None:
    fmt = v.mapping(raw, path, required=False)
    if fmt is None:
        return
    v.unknown(fmt, ("type", "plain", "json", "omitEmptyValues"), path)
    kind = fmt.get("type")
    if kind is None:
        v.add(join(path, "type"), "must be defined")
    elif kind not in (PLAIN, JSON):
        v.add(join(path, "type"), f"must be one of: {PLAIN}, {JSON}")
    if fmt.get("omitEmptyValues") is not None and not isinstance(fmt["omitEmptyValues"], bool):
        v.add(join(path, "omitEmptyValues"), "must be true or false")
    if kind == PLAIN:
        v.string(fmt.get("plain"), join(path, "plain"))
        if fmt.get("json") is not None:
            v.add(join(path, "json"), "must not be set when type is Plain")
    if kind == JSON:
        if fmt.get("plain") is not None:
            v.add(join(path, "plain"), "must not be set when type is Json")
        items = v.sequence(fmt.get("json"), join(path, "json"))
        if fmt.get("json") is None or fmt.get("json") == []:
            v.add(join(path, "json"), "must hold at least one key/value pair")
        for i, raw_item in enumerate(items):
            p = f"{join(path, 'json')}[{i}]"
            item = v.mapping(raw_item, p)
            if item is None:
                continue
            v.unknown(item, ("key", "value"), p)
            key, value = v.string(item.get("key"), join(p, "key")), v.string(item.get("value"), join(p, "value"))
            if key is not None and value is not None:
                try:  # Kuma's rule: the pair written as `{"key": "value"}` must be valid JSON (no raw quotes)
                    json.loads(f'{{"{key}": "{value}"}}')
                except ValueError:
                    v.add(p, "key and value must form valid JSON: escape quotes, backslashes and control characters")


def _validate_body(v: Violations, raw: Any, path: str) -> None:
    body = v.mapping(raw, path, required=False)
    if body is None:
        return
    from google.protobuf import json_format
    from opentelemetry.proto.common.v1 import common_pb2

    try:
        json_format.ParseDict(dict(body), common_pb2.AnyValue())
    except json_format.ParseError as e:
        v.add(path, f"must be an OpenTelemetry AnyValue ({', '.join(ANY_VALUE_KEYS)}): {e}")


def _validate_otel(v: Violations, otel: Mapping[str, Any], path: str) -> None:
    v.unknown(otel, ("endpoint", "backendRef", "attributes", "body"), path)
    has_endpoint, has_ref = otel.get("endpoint") is not None, otel.get("backendRef") is not None
    if has_endpoint == has_ref:
        v.add(path, "must set exactly one of: endpoint, backendRef")
    if has_endpoint:
        _host_port(v, otel.get("endpoint"), join(path, "endpoint"))
    ref = v.mapping(otel.get("backendRef"), join(path, "backendRef"), required=False)
    if ref is not None:
        rp = join(path, "backendRef")
        v.unknown(ref, ("kind", "name", "labels"), rp)
        if ref.get("kind") != OTEL_BACKEND_KIND:
            v.add(join(rp, "kind"), f"must be {OTEL_BACKEND_KIND}")
        if not ref.get("name") and not ref.get("labels"):
            v.add(rp, "must set name or labels")
        v.tags(ref.get("labels"), join(rp, "labels"))
    for i, raw in enumerate(v.sequence(otel.get("attributes"), join(path, "attributes"))):
        p = f"{join(path, 'attributes')}[{i}]"
        attr = v.mapping(raw, p)
        if attr is None:
            continue
        v.unknown(attr, ("key", "value"), p)
        key = v.string(attr.get("key"), join(p, "key"))
        if key is not None and not ATTRIBUTE_KEY_RE.fullmatch(key):
            v.add(join(p, "key"), f"must match {ATTRIBUTE_KEY_RE.pattern}")
        v.string(attr.get("value"), join(p, "value"))
    _validate_body(v, otel.get("body"), join(path, "body"))


def validate_backend(v: Violations, raw: Any, path: str) -> None:
    typed = v.typed_block(raw, path, _BLOCK)
    if typed is None:
        return
    kind, block_doc = typed
    bp = join(path, _BLOCK[kind])
    if kind == FILE:
        v.unknown(block_doc, ("path", "format"), bp)
        _absolute_path(v, block_doc.get("path"), join(bp, "path"))
        validate_format(v, block_doc.get("format"), join(bp, "format"))
    elif kind == TCP:
        v.unknown(block_doc, ("address", "format"), bp)
        _host_port(v, block_doc.get("address"), join(bp, "address"))
        validate_format(v, block_doc.get("format"), join(bp, "format"))
    else:
        _validate_otel(v, block_doc, bp)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("backends",), path)
    if conf.get("backends") is None:
        v.add(join(path, "backends"), "must be defined (an empty list turns logging off)")
    for i, raw in enumerate(v.sequence(conf.get("backends"), join(path, "backends"))):
        validate_backend(v, raw, f"{join(path, 'backends')}[{i}]")
