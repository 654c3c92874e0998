"""MeshHealthCheck's `default` conf (reference kuma-policies.md §7) and its validation, every violation at its path.
Confs stay JSON so the generic merge folds them field by field; Kuma's defaults fill the gaps in xds.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dpagent.controlplane.policies.envelope import TO, Shape
from dpagent.controlplane.policies.meshcircuitbreaker.api import (
    boolean,
    percent,
    positive_duration,
    positive_int,
)
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from dpagent.model.validation import Violations, join

KIND = "MeshHealthCheck"
SHAPE = Shape(sections=(TO,),
              top_kinds=(MESH, MESH_SUBSET, MESH_GATEWAY, MESH_SERVICE, MESH_SERVICE_SUBSET, DATAPLANE),
              to_kinds=(MESH, MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE), required_one_of=(TO,))

DURATIONS = ("interval", "timeout", "initialJitter", "intervalJitter", "noTrafficInterval")
THRESHOLDS = ("unhealthyThreshold", "healthyThreshold")
BOOLS = ("alwaysLogHealthCheckFailures", "reuseConnection", "failTrafficOnPanic")
CHECKERS = ("http", "tcp", "grpc")
FIELDS = (*DURATIONS, *THRESHOLDS, *BOOLS, *CHECKERS, "intervalJitterPercent", "eventLogPath",
          "healthyPanicThreshold")
MAX_HEADERS = 16
HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}")


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, FIELDS, path)
    for key in DURATIONS:
        positive_duration(v, conf.get(key), join(path, key))
    for key in THRESHOLDS:
        positive_int(v, conf.get(key), join(path, key))
    for key in BOOLS:
        boolean(v, conf.get(key), join(path, key))
    percent(v, conf.get("intervalJitterPercent"), join(path, "intervalJitterPercent"), decimals=False)
    percent(v, conf.get("healthyPanicThreshold"), join(path, "healthyPanicThreshold"))
    if conf.get("eventLogPath") is not None:
        log = v.string(conf.get("eventLogPath"), join(path, "eventLogPath"))
        if log is not None and not log.strip():
            v.add(join(path, "eventLogPath"), "must be a file path")
    if not any(conf.get(k) is not None for k in CHECKERS):
        v.add(path, "must define at least one of: http, tcp, grpc")
    http = v.mapping(conf.get("http"), join(path, "http"), required=False)
    if http is not None:
        _http(v, http, join(path, "http"))
    tcp = v.mapping(conf.get("tcp"), join(path, "tcp"), required=False)
    if tcp is not None:
        p = join(path, "tcp")
        v.unknown(tcp, ("disabled", "send", "receive"), p)
        boolean(v, tcp.get("disabled"), join(p, "disabled"))
        v.string(tcp.get("send"), join(p, "send"), required=False)
        for i, raw in enumerate(v.sequence(tcp.get("receive"), join(p, "receive")) if "receive" in tcp else []):
            v.string(raw, f"{join(p, 'receive')}[{i}]")
    grpc = v.mapping(conf.get("grpc"), join(path, "grpc"), required=False)
    if grpc is not None:
        p = join(path, "grpc")
        v.unknown(grpc, ("disabled", "serviceName", "authority"), p)
        boolean(v, grpc.get("disabled"), join(p, "disabled"))
        v.string(grpc.get("serviceName"), join(p, "serviceName"), required=False)
        v.string(grpc.get("authority"), join(p, "authority"), required=False)


def _http(v: Violations, http: Mapping[str, Any], p: str) -> None:
    v.unknown(http, ("disabled", "path", "requestHeadersToAdd", "expectedStatuses"), p)
    boolean(v, http.get("disabled"), join(p, "disabled"))
    if "path" in http:
        path = v.string(http.get("path"), join(p, "path"))
        if path is not None and not path:
            v.add(join(p, "path"), "must not be empty")
    statuses = v.sequence(http.get("expectedStatuses"), join(p, "expectedStatuses")) \
        if "expectedStatuses" in http else []
    for i, status in enumerate(statuses):
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            v.add(f"{join(p, 'expectedStatuses')}[{i}]", "must be an HTTP status code between 100 and 599")
    headers = v.mapping(http.get("requestHeadersToAdd"), join(p, "requestHeadersToAdd"), required=False)
    if headers is None:
        return
    hp = join(p, "requestHeadersToAdd")
    v.unknown(headers, ("set", "add"), hp)
    count = 0
    for key in ("set", "add"):
        for i, raw in enumerate(v.sequence(headers.get(key), join(hp, key)) if key in headers else []):
            count += 1
            item = v.mapping(raw, f"{join(hp, key)}[{i}]")
            if item is None:
                continue
            ip = f"{join(hp, key)}[{i}]"
            v.unknown(item, ("name", "value"), ip)
            name = v.string(item.get("name"), join(ip, "name"))
            if name is not None and not HEADER_RE.fullmatch(name):
                v.add(join(ip, "name"), "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            v.string(item.get("value"), join(ip, "value"))
    if count > MAX_HEADERS:
        v.add(hp, f"must hold at most {MAX_HEADERS} headers, not {count}")
