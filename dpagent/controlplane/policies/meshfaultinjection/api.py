"""MeshFaultInjection's spec: `default.http[]`, each element one fault (abort, delay and/or response bandwidth,
each with its own percentage), and its validation. Envelope, targetRefs and sections are checked generically."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import FROM, RULES, Shape
from dpagent.controlplane.policies.meshhttproute.api_filters import check_percentage
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from dpagent.durations import parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshFaultInjection"
SHAPE = Shape(sections=(FROM, RULES),
              top_kinds=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
              from_kinds=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
              required_one_of=(FROM, RULES))

# <int><unit>: Envoy takes kilobits per second, so the unit is a multiplier.
BANDWIDTH_RE = re.compile(r"^(\d+)(kbps|Mbps|Gbps)$")
KBPS = {"kbps": 1, "Mbps": 1000, "Gbps": 1_000_000}
_FAULTS = ("abort", "delay", "responseBandwidth")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class Abort(_S):
    http_status: int
    percentage: int | str


class Delay(_S):
    value: str | int | float
    percentage: int | str


class ResponseBandwidth(_S):
    limit: str
    percentage: int | str


class Fault(_S):
    """One `http[]` element: becomes one Envoy fault filter."""

    abort: Abort | None = None
    delay: Delay | None = None
    response_bandwidth: ResponseBandwidth | None = None


class Conf(_S):
    http: tuple[Fault, ...] = ()


def kbps(limit: str) -> int:
    m = BANDWIDTH_RE.match(limit)
    assert m is not None  # validated
    return int(m.group(1)) * KBPS[m.group(2)]


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("http",), path)
    for _, p, fault in v.objects(v.sequence(conf.get("http", []), join(path, "http")), join(path, "http"), _FAULTS):
        if not any(fault.get(k) is not None for k in _FAULTS):
            v.add(p, "must define at least one of: " + ", ".join(_FAULTS))
        abort = v.mapping(fault.get("abort"), join(p, "abort"), required=False)
        if abort is not None:
            v.unknown(abort, ("httpStatus", "percentage"), join(p, "abort"))
            status = abort.get("httpStatus")
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                v.add(join(p, "abort.httpStatus"), "must be an HTTP status code between 100 and 599")
            _required_percentage(v, abort, join(p, "abort"))
        delay = v.mapping(fault.get("delay"), join(p, "delay"), required=False)
        if delay is not None:
            v.unknown(delay, ("value", "percentage"), join(p, "delay"))
            try:
                if delay.get("value") is None:
                    raise ValueError("must be defined")
                parse_duration(delay["value"])
            except ValueError as e:
                v.add(join(p, "delay.value"), str(e))
            _required_percentage(v, delay, join(p, "delay"))
        bw = v.mapping(fault.get("responseBandwidth"), join(p, "responseBandwidth"), required=False)
        if bw is not None:
            v.unknown(bw, ("limit", "percentage"), join(p, "responseBandwidth"))
            limit = bw.get("limit")
            if not isinstance(limit, str) or not BANDWIDTH_RE.match(limit):
                v.add(join(p, "responseBandwidth.limit"), "must be a whole number followed by kbps, Mbps or Gbps, "
                      "e.g. 100kbps")
            _required_percentage(v, bw, join(p, "responseBandwidth"))


def _required_percentage(v: Violations, m: Mapping[str, Any], path: str) -> None:
    if m.get("percentage") is None:
        v.add(join(path, "percentage"), "must be defined")
    else:
        check_percentage(v, m["percentage"], join(path, "percentage"))


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)
