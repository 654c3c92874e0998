"""MeshRateLimit's spec: `default.local.http` (request rate, what a limited request gets back) and
`default.local.tcp` (connection rate), typed, with validation. Envelope, targetRefs and sections are generic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import FROM, RULES, Shape
from dpagent.controlplane.policies.meshroute.headers import header_name
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from dpagent.durations import parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshRateLimit"
SHAPE = Shape(sections=(FROM, RULES),
              top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
              from_kinds=(MESH,),
              required_one_of=(FROM, RULES))
MAX_HEADERS = 16
MIN_INTERVAL = 0.05  # Kuma: strictly above 50 ms, a shorter refill is too coarse for Envoy's timer


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class Rate(_S):
    num: int
    interval: str | int | float

    def seconds(self) -> float:
        return parse_duration(self.interval)


class Header(_S):
    name: str
    value: str


class Headers(_S):
    set: tuple[Header, ...] = ()
    add: tuple[Header, ...] = ()


class OnRateLimit(_S):
    status: int | None = None
    headers: Headers | None = None


class Http(_S):
    disabled: bool = False
    request_rate: Rate | None = None
    on_rate_limit: OnRateLimit | None = None


class Tcp(_S):
    disabled: bool = False
    connection_rate: Rate | None = None


class Local(_S):
    http: Http | None = None
    tcp: Tcp | None = None


class Conf(_S):
    local: Local | None = None


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("local",), path)
    local = v.mapping(conf.get("local"), join(path, "local"))
    if local is None:
        return
    p = join(path, "local")
    v.unknown(local, ("http", "tcp"), p)
    if local.get("http") is None and local.get("tcp") is None:
        v.add(p, "must define http and/or tcp")
    http = v.mapping(local.get("http"), join(p, "http"), required=False)
    if http is not None:
        hp = join(p, "http")
        v.unknown(http, ("disabled", "requestRate", "onRateLimit"), hp)
        if all(http.get(k) is None for k in ("disabled", "requestRate", "onRateLimit")):
            v.add(hp, "must define at least one of: disabled, requestRate, onRateLimit")
        _disabled(v, http, hp)
        _rate(v, http.get("requestRate"), join(hp, "requestRate"))
        on = v.mapping(http.get("onRateLimit"), join(hp, "onRateLimit"), required=False)
        if on is not None:
            op = join(hp, "onRateLimit")
            v.unknown(on, ("status", "headers"), op)
            status = on.get("status")
            if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                                       or not 100 <= status <= 599):
                v.add(join(op, "status"), "must be an HTTP status code between 100 and 599")
            headers = v.mapping(on.get("headers"), join(op, "headers"), required=False)
            if headers is not None:
                v.unknown(headers, ("set", "add"), join(op, "headers"))
                for key in ("set", "add"):
                    lp = join(op, f"headers.{key}")
                    items = v.sequence(headers.get(key, []), lp)
                    if len(items) > MAX_HEADERS:
                        v.add(lp, f"must hold at most {MAX_HEADERS} headers")
                    for _, hp, h in v.objects(items, lp, ("name", "value")):
                        header_name(v, h.get("name"), join(hp, "name"))
                        v.string(h.get("value"), join(hp, "value"))
    tcp = v.mapping(local.get("tcp"), join(p, "tcp"), required=False)
    if tcp is not None:
        tp = join(p, "tcp")
        v.unknown(tcp, ("disabled", "connectionRate"), tp)
        if tcp.get("disabled") is None and tcp.get("connectionRate") is None:
            v.add(tp, "must define disabled or connectionRate")
        _disabled(v, tcp, tp)
        _rate(v, tcp.get("connectionRate"), join(tp, "connectionRate"))


def _disabled(v: Violations, m: Mapping[str, Any], path: str) -> None:
    if m.get("disabled") is not None and not isinstance(m["disabled"], bool):
        v.add(join(path, "disabled"), "must be true or false")


def _rate(v: Violations, raw: Any, path: str) -> None:
    rate = v.mapping(raw, path, required=False)
    if rate is None:
        return
    v.unknown(rate, ("num", "interval"), path)
    num = rate.get("num")
    if num is None:
        v.add(join(path, "num"), "must be defined")
    elif isinstance(num, bool) or not isinstance(num, int) or not 0 < num < 2**32:
        v.add(join(path, "num"), "must be a whole number greater than 0")
    if rate.get("interval") is None:
        v.add(join(path, "interval"), "must be defined")
        return
    try:
        seconds = parse_duration(rate["interval"])
    except ValueError as e:
        v.add(join(path, "interval"), str(e))
        return
    if seconds <= MIN_INTERVAL:
        v.add(join(path, "interval"), "must be greater than 50ms")
