"""MeshRetry's schema (typed Structs) and its collect-every-violation validation of one `to[].default` conf
(reference kuma-policies.md §5; envelope and targetRefs §1). MeshRetry has no inbound side: only `to[]`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import TO, Shape
from dpagent.controlplane.policies.meshroute.headers import HeaderMatch, validate_header_match
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from dpagent.durations import parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshRetry"

# Kuma's retryOn words for HTTP → Envoy's retry_on tokens ("5XX" too: Kuma's docs show it, though its validator
# refuses it). A numeric status goes to retriable_status_codes and an HttpMethod<X> word to a `:method`
# retriable_request_headers matcher instead.
HTTP_RETRY_ON = {"5xx": "5xx", "5XX": "5xx", "GatewayError": "gateway-error", "Reset": "reset",
                 "Retriable4xx": "retriable-4xx",
                 "ConnectFailure": "connect-failure", "EnvoyRatelimited": "envoy-ratelimited",
                 "RefusedStream": "refused-stream", "Http3PostConnectFailure": "http3-post-connect-failure"}
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
METHOD_PREFIX = "HttpMethod"
GRPC_RETRY_ON = {"Canceled": "canceled", "DeadlineExceeded": "deadline-exceeded", "Internal": "internal",
                 "ResourceExhausted": "resource-exhausted", "Unavailable": "unavailable"}
RESET_FORMATS = ("Seconds", "UnixTimestamp")
OMIT_PREVIOUS_HOSTS, OMIT_HOSTS_WITH_TAGS, OMIT_PREVIOUS_PRIORITIES = (
    "OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities")
PREDICATES = (OMIT_PREVIOUS_HOSTS, OMIT_HOSTS_WITH_TAGS, OMIT_PREVIOUS_PRIORITIES)
UINT32_MAX = 2**32 - 1

TOP_KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET, DATAPLANE, MESH_GATEWAY, MESH_HTTP_ROUTE)
TO_KINDS = (MESH, MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE, MESH_HTTP_ROUTE)
SHAPE = Shape(sections=(TO,), top_kinds=TOP_KINDS, to_kinds=TO_KINDS, required_one_of=(TO,))


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class BackOff(_S):
    base_interval: str | None = None
    max_interval: str | None = None


class ResetHeader(_S):
    name: str
    format: str


class RateLimitedBackOff(_S):
    reset_headers: tuple[ResetHeader, ...] = ()
    max_interval: str | None = None


class HostSelection(_S):
    predicate: str
    tags: dict[str, str] | None = None
    update_frequency: int | None = None


class HTTP(_S):
    num_retries: int | None = None
    per_try_timeout: str | None = None
    back_off: BackOff | None = None
    rate_limited_back_off: RateLimitedBackOff | None = None
    retry_on: tuple[str, ...] | None = None
    retriable_response_headers: tuple[HeaderMatch, ...] | None = None
    retriable_request_headers: tuple[HeaderMatch, ...] | None = None
    host_selection: tuple[HostSelection, ...] | None = None
    host_selection_max_attempts: int | None = None


class GRPC(_S):
    num_retries: int | None = None
    per_try_timeout: str | None = None
    back_off: BackOff | None = None
    rate_limited_back_off: RateLimitedBackOff | None = None
    retry_on: tuple[str, ...] | None = None


class TCP(_S):
    max_connect_attempt: int


class Conf(_S):
    """One merged `default` conf toward a destination."""

    http: HTTP | None = None
    grpc: GRPC | None = None
    tcp: TCP | None = None


def to_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    """Every problem of one `to[].default`: at least one of tcp/http/grpc, each checked field by field."""
    v.unknown(conf, ("tcp", "http", "grpc"), path)
    if all(conf.get(k) is None for k in ("tcp", "http", "grpc")):
        v.add(path, "must define at least one of: tcp, http, grpc")
    tcp = v.mapping(conf.get("tcp"), join(path, "tcp"), required=False)
    if tcp is not None:
        v.unknown(tcp, ("maxConnectAttempt",), join(path, "tcp"))
        _uint(v, tcp.get("maxConnectAttempt"), join(path, "tcp.maxConnectAttempt"), required=True, positive=True)
    for name, extra in (("http", _HTTP_ONLY), ("grpc", ())):
        block = v.mapping(conf.get(name), join(path, name), required=False)
        if block is not None:
            _protocol(v, block, join(path, name), name, extra)


_COMMON = ("numRetries", "perTryTimeout", "backOff", "rateLimitedBackOff", "retryOn")
_HTTP_ONLY = ("retriableResponseHeaders", "retriableRequestHeaders", "hostSelection", "hostSelectionMaxAttempts")


def _protocol(v: Violations, block: Mapping[str, Any], path: str, name: str, extra: tuple[str, ...]) -> None:
    v.unknown(block, (*_COMMON, *extra), path)
    if not block:
        v.add(path, "must not be empty: set numRetries, retryOn or another field, or leave the section out")
    _uint(v, block.get("numRetries"), join(path, "numRetries"))
    _duration(v, block.get("perTryTimeout"), join(path, "perTryTimeout"))
    back_off = v.mapping(block.get("backOff"), join(path, "backOff"), required=False)
    if back_off is not None:
        p = join(path, "backOff")
        v.unknown(back_off, ("baseInterval", "maxInterval"), p)
        if back_off.get("baseInterval") is None and back_off.get("maxInterval") is None:
            v.add(p, "must define baseInterval and/or maxInterval")
        base = _duration(v, back_off.get("baseInterval"), join(p, "baseInterval"), positive=True)
        top = _duration(v, back_off.get("maxInterval"), join(p, "maxInterval"), positive=True)
        if base is not None and top is not None and top < base:
            v.add(join(p, "maxInterval"), "must not be shorter than baseInterval")
    _rate_limited(v, block.get("rateLimitedBackOff"), join(path, "rateLimitedBackOff"))
    words = HTTP_RETRY_ON if name == "http" else GRPC_RETRY_ON
    for i, raw in enumerate(v.sequence(block.get("retryOn"), join(path, "retryOn"))):
        p = f"{join(path, 'retryOn')}[{i}]"
        if not isinstance(raw, str) or not (raw in words or (name == "http" and (
                _status(raw) is not None or _method(raw) is not None))):
            allowed = ", ".join(words) + (", an HTTP status code such as \"503\", or HttpMethod<Get|Post|...>"
                                          if name == "http" else "")
            v.add(p, f"unknown value {raw!r}: must be one of {allowed}")
    if name != "http":
        return
    for key in ("retriableResponseHeaders", "retriableRequestHeaders"):
        for i, raw in enumerate(v.sequence(block.get(key), join(path, key))):
            validate_header_match(v, raw, f"{join(path, key)}[{i}]")
    _host_selection(v, block.get("hostSelection"), join(path, "hostSelection"))
    _uint(v, block.get("hostSelectionMaxAttempts"), join(path, "hostSelectionMaxAttempts"), limit=2**63 - 1)


def _rate_limited(v: Violations, raw: Any, path: str) -> None:
    block = v.mapping(raw, path, required=False)
    if block is None:
        return
    v.unknown(block, ("resetHeaders", "maxInterval"), path)
    headers = v.sequence(block.get("resetHeaders"), join(path, "resetHeaders"))
    if not headers and isinstance(block.get("resetHeaders", []), list):
        v.add(join(path, "resetHeaders"), "must define at least one header")
    for _, p, m in v.objects(headers, join(path, "resetHeaders"), ("name", "format")):
        v.string(m.get("name"), join(p, "name"))
        if m.get("format") not in RESET_FORMATS:
            v.add(join(p, "format"), f"must be one of: {', '.join(RESET_FORMATS)}")
    _duration(v, block.get("maxInterval"), join(path, "maxInterval"), positive=True)


def _host_selection(v: Violations, raw: Any, path: str) -> None:
    priorities = 0
    for _, p, m in v.objects(v.sequence(raw, path), path, ("predicate", "tags", "updateFrequency")):
        predicate = m.get("predicate")
        if predicate not in PREDICATES:
            v.add(join(p, "predicate"), f"must be one of: {', '.join(PREDICATES)}")
        if predicate == OMIT_HOSTS_WITH_TAGS:
            if not m.get("tags"):
                v.add(join(p, "tags"), "must be defined with predicate OmitHostsWithTags")
            else:
                v.tags(m.get("tags"), join(p, "tags"))
        elif m.get("tags") is not None:
            v.add(join(p, "tags"), "may only be set with predicate OmitHostsWithTags")
        if predicate == OMIT_PREVIOUS_PRIORITIES:
            priorities += 1
            if priorities == 2:
                v.add(join(p, "predicate"), "OmitPreviousPriorities may be listed only once")
            _uint(v, m.get("updateFrequency"), join(p, "updateFrequency"), positive=True)
        elif m.get("updateFrequency") is not None:
            v.add(join(p, "updateFrequency"), "may only be set with predicate OmitPreviousPriorities")


def _uint(v: Violations, value: Any, path: str, *, required: bool = False, positive: bool = False,
          limit: int = UINT32_MAX) -> None:
    if value is None:
        if required:
            v.add(path, "must be defined")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        v.add(path, "must be a whole number")
    elif value < (1 if positive else 0) or value > limit:
        v.add(path, f"must be {'greater than 0' if positive else 'zero or more'} and at most {limit}")


def _duration(v: Violations, value: Any, path: str, *, positive: bool = False) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        v.add(path, "must be a duration string like 250ms or 2s")
        return None
    if value.strip().startswith("-"):
        v.add(path, f"must not be negative (got {value!r})")
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        v.add(path, str(exc))
        return None
    if positive and seconds <= 0:
        v.add(path, "must be greater than 0")
    return seconds


def _status(word: str) -> int | None:
    if word.isdigit() and 100 <= int(word) <= 599:
        return int(word)
    return None


def _method(word: str) -> str | None:
    if word.startswith(METHOD_PREFIX) and word[len(METHOD_PREFIX):].upper() in HTTP_METHODS \
            and word[len(METHOD_PREFIX):] == word[len(METHOD_PREFIX):].capitalize():
        return word[len(METHOD_PREFIX):].upper()
    return None


def retry_on_status(word: str) -> int | None:
    """The status code a numeric retryOn word names (it goes to retriable_status_codes)."""
    return _status(word)


def retry_on_method(word: str) -> str | None:
    """The upper-case method an `HttpMethod<X>` retryOn word names (a `:method` retriable header)."""
    return _method(word)
