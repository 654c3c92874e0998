"""MeshPassthrough's spec (reference kuma-policies.md §13.2): `passthroughMode` and the `appendMatch` destinations
(Domain with an optional leading `*.`, IP, CIDR; port; protocol), with validation reporting every violation with
its path. The envelope and targetRef are checked generically."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import DEFAULT, Shape
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SUBSET
from dpagent.model.validation import HOST_RE, Violations, is_ip, join

KIND = "MeshPassthrough"
SHAPE = Shape(sections=(DEFAULT,), top_kinds=(MESH, MESH_SUBSET, DATAPLANE))
ALL, MATCHED, NONE = "All", "Matched", "None"
MODES = (ALL, MATCHED, NONE)
DOMAIN, IP, CIDR = "Domain", "IP", "CIDR"
TYPES = (DOMAIN, IP, CIDR)
PROTOCOLS = ("tcp", "tls", "grpc", "http", "http2", "mysql")
HTTP_KINDS = ("grpc", "http", "http2")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True, forbid_unknown_fields=False):
    pass


class Match(_S):
    type: str
    value: str
    port: int = 0  # 0: every port
    protocol: str = "tcp"


class Conf(_S):
    passthrough_mode: str | None = None
    append_match: tuple[Match, ...] = ()


def parse_conf(raw: Mapping[str, Any]) -> Conf:
    return msgspec.convert(dict(raw), Conf)


def is_wildcard(domain: str) -> bool:
    return domain.startswith("*.")


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("passthroughMode", "appendMatch"), path)
    mode = conf.get("passthroughMode")
    if mode is not None and mode not in MODES:
        v.add(join(path, "passthroughMode"), f"must be one of: {', '.join(MODES)}")
    seen: set[tuple[Any, Any, Any]] = set()
    http_by_port: dict[int, str] = {}
    for i, raw in enumerate(v.sequence(conf.get("appendMatch"), join(path, "appendMatch"))):
        p = f"{join(path, 'appendMatch')}[{i}]"
        m = v.mapping(raw, p)
        if m is None:
            continue
        v.unknown(m, ("type", "value", "port", "protocol"), p)
        kind, value, protocol = m.get("type"), v.string(m.get("value"), join(p, "value")), m.get("protocol", "tcp")
        port = v.port(m.get("port"), join(p, "port"), required=False)
        if kind not in TYPES:
            v.add(join(p, "type"), f"must be one of: {', '.join(TYPES)}")
        if protocol not in PROTOCOLS:
            v.add(join(p, "protocol"), f"must be one of: {', '.join(PROTOCOLS)}")
            protocol = None
        if value is not None:
            _value(v, kind, value, join(p, "value"))
        if kind == DOMAIN and protocol in ("tcp", "mysql"):
            v.add(join(p, "protocol"), f"a Domain cannot be matched with protocol {protocol} (no name on the wire); "
                                       "use tls, http, http2 or grpc, or match its IP")
        if kind == DOMAIN and value and is_wildcard(value) and port is None and protocol in HTTP_KINDS:
            v.add(join(p, "port"), f"a wildcard Domain with protocol {protocol} needs a port")
        if protocol == "mysql" and port is None:
            v.add(join(p, "port"), "protocol mysql needs a port")
        if protocol in HTTP_KINDS and port is not None:
            other = http_by_port.setdefault(port, protocol)
            if other != protocol:
                v.add(join(p, "protocol"), f"port {port} already carries {other}; grpc, http and http2 entries on "
                                           "one port must share a protocol")
        key = (value, port, protocol)
        if key in seen:
            v.add(p, "duplicates an earlier entry (same value, port and protocol)")
        seen.add(key)


def _value(v: Violations, kind: Any, value: str, path: str) -> None:
    if kind == IP and not is_ip(value):
        v.add(path, f"{value!r} is not a valid IP address")
    elif kind == CIDR:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            v.add(path, f"{value!r} is not a valid CIDR")
    elif kind == DOMAIN:
        host = value[2:] if is_wildcard(value) else value
        if "*" in host or not HOST_RE.fullmatch(host):
            v.add(path, f"{value!r} is not a valid domain (one leading '*.' wildcard at most)")
