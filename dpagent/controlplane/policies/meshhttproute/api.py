"""MeshHTTPRoute's schema (typed Structs) and its collect-every-violation validation, following Kuma's rules
(reference kuma-policies.md §2.1 for the fields, §1.2 for targetRefs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import Policy, parse_policy
from dpagent.controlplane.policies.meshhttproute.api_filters import validate_filter
from dpagent.controlplane.policies.meshroute.headers import (
    EXACT,
    REGEX,
    HeaderMatch,
    check_regex,
    validate_header_match,
)
from dpagent.controlplane.policies.meshroute.refs import (
    BACKEND_KINDS,
    GATEWAY_TO_KINDS,
    ROUTE_SHAPE,
    TO_KINDS,
    BackendRef,
    validate_ref,
    validate_route_spec,
)
from dpagent.model.validation import HOST_RE, Violations, join

KIND = "MeshHTTPRoute"
PATH_PREFIX = "PathPrefix"
PATH_TYPES = (EXACT, PATH_PREFIX, REGEX)
METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
QUERY_TYPES = (EXACT, REGEX)


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class PathMatch(_S):
    type: str
    value: str


class QueryParamMatch(_S):
    type: str
    name: str
    value: str


class Match(_S):
    """Every set field must hold; an empty match matches every request."""

    path: PathMatch | None = None
    method: str | None = None
    query_params: tuple[QueryParamMatch, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()


class HeaderValue(_S):
    name: str
    value: str


class HeaderModifier(_S):
    set: tuple[HeaderValue, ...] = ()
    add: tuple[HeaderValue, ...] = ()
    remove: tuple[str, ...] = ()


class PathRewrite(_S):
    type: str
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


class RequestRedirect(_S):
    scheme: str | None = None
    hostname: str | None = None
    path: PathRewrite | None = None
    port: int | None = None
    status_code: int = 302


class URLRewrite(_S):
    hostname: str | None = None
    path: PathRewrite | None = None
    host_to_backend_hostname: bool = False


class RequestMirror(_S):
    backend_ref: BackendRef
    percentage: int | str | None = None


class Filter(_S):
    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None


class RuleConf(_S):
    """No (or empty) backendRefs means "the destination itself" (§2.3). None differs from an explicit empty list
    when rules merge: an explicit list, even empty, replaces the lower-priority one."""

    filters: tuple[Filter, ...] | None = None
    backend_refs: tuple[BackendRef, ...] | None = None


class Rule(_S):
    matches: tuple[Match, ...]
    default: RuleConf = RuleConf()


class ToConf(_S):
    """One `to[]` item without its targetRef: what the generic envelope keeps as the item's conf (route_to)."""

    rules: tuple[Rule, ...] = ()
    hostnames: tuple[str, ...] = ()


SHAPE = ROUTE_SHAPE


def to_rules(conf: Mapping[str, Any]) -> tuple[Rule, ...]:
    """The typed rules of one matched `to[]` item (its conf was validated when the policy was parsed)."""
    return msgspec.convert(conf, ToConf).rules


def validate_meshhttproute(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded MeshHTTPRoute document, with Kuma-style paths."""
    v = Violations()
    items, gateway = validate_route_spec(v, doc, KIND)
    for i, raw in enumerate(items):
        _to(v, raw, f"spec.to[{i}]", gateway)
    return v.items


def parse_meshhttproute(doc: Any) -> Policy:
    """Validate then convert to the generic Policy (to[] confs kept as JSON); raises ValidationError listing every
    violation."""
    return parse_policy(KIND, SHAPE, lambda *_: None, doc, problems=validate_meshhttproute(doc))


def _to(v: Violations, raw: Any, path: str, gateway: bool) -> None:
    item = v.mapping(raw, path)
    if item is None:
        return
    v.unknown(item, ("targetRef", "hostnames", "rules"), path)
    validate_ref(v, item.get("targetRef"), join(path, "targetRef"), GATEWAY_TO_KINDS if gateway else TO_KINDS)
    if not gateway and item.get("hostnames") not in (None, []):
        v.add(join(path, "hostnames"), "must not be defined (hostnames only apply to a MeshGateway route)")
    for k, host in enumerate(v.sequence(item.get("hostnames"), join(path, "hostnames")) if gateway else ()):
        if not isinstance(host, str) or not HOST_RE.fullmatch(host.removeprefix("*.")):
            v.add(f"{join(path, 'hostnames')}[{k}]", "must be a DNS name, optionally starting with '*.'")
    if item.get("rules") is None:
        v.add(join(path, "rules"), "must be defined")
    for j, rule in enumerate(v.sequence(item.get("rules"), join(path, "rules"))):
        _rule(v, rule, f"{join(path, 'rules')}[{j}]", gateway)


def _rule(v: Violations, raw: Any, path: str, gateway: bool) -> None:
    rule = v.mapping(raw, path)
    if rule is None:
        return
    v.unknown(rule, ("matches", "default"), path)
    if rule.get("matches") is None:
        v.add(join(path, "matches"), "must be defined")
    elif rule.get("matches") == []:
        v.add(join(path, "matches"), "needs at least one item")
    matches = v.sequence(rule.get("matches"), join(path, "matches"))
    for k, m in enumerate(matches):
        _match(v, m, f"{join(path, 'matches')}[{k}]")
    all_prefix = bool(matches) and all(isinstance(m, Mapping) and isinstance(m.get("path"), Mapping)
                                       and m["path"].get("type") == PATH_PREFIX for m in matches)
    conf = v.mapping(rule.get("default"), join(path, "default"), required=False)
    if conf is None:
        if gateway:
            v.add(join(path, "default.backendRefs"), "must be defined on a MeshGateway route without a redirect")
        return
    p = join(path, "default")
    v.unknown(conf, ("filters", "backendRefs"), p)
    redirect = False
    for k, f in enumerate(v.sequence(conf.get("filters"), join(p, "filters"))):
        redirect |= validate_filter(v, f, f"{join(p, 'filters')}[{k}]", all_prefix, gateway)
    refs = v.sequence(conf.get("backendRefs"), join(p, "backendRefs"))
    for k, ref in enumerate(refs):
        validate_ref(v, ref, f"{join(p, 'backendRefs')}[{k}]", BACKEND_KINDS, backend=True)
    if gateway and not refs and not redirect:
        v.add(join(p, "backendRefs"), "must not be empty on a MeshGateway route without a RequestRedirect filter")


def _match(v: Violations, raw: Any, path: str) -> None:
    m = v.mapping(raw, path)
    if m is None:
        return
    v.unknown(m, ("path", "method", "headers", "queryParams"), path)
    pm = v.mapping(m.get("path"), join(path, "path"), required=False)
    if pm is not None:
        pp = join(path, "path")
        v.unknown(pm, ("type", "value"), pp)
        kind = pm.get("type")
        if kind not in PATH_TYPES:
            v.add(join(pp, "type"), f"must be one of: {', '.join(PATH_TYPES)}")
        value = v.string(pm.get("value"), join(pp, "value"))
        if value is not None and kind in (EXACT, PATH_PREFIX):
            if not value.startswith("/"):
                v.add(join(pp, "value"), "must start with '/'")
            elif kind == PATH_PREFIX and value != "/" and value.endswith("/"):
                v.add(join(pp, "value"), "does not need a trailing '/' (a PathPrefix matches whole segments)")
        elif value is not None and kind == REGEX:
            check_regex(v, value, join(pp, "value"))
    if m.get("method") is not None and m.get("method") not in METHODS:
        v.add(join(path, "method"), f"must be one of: {', '.join(METHODS)}")
    for k, raw_h in enumerate(v.sequence(m.get("headers"), join(path, "headers"))):
        validate_header_match(v, raw_h, f"{join(path, 'headers')}[{k}]")
    seen: set[str] = set()
    for k, raw_q in enumerate(v.sequence(m.get("queryParams"), join(path, "queryParams"))):
        qp = f"{join(path, 'queryParams')}[{k}]"
        q = v.mapping(raw_q, qp)
        if q is None:
            continue
        v.unknown(q, ("type", "name", "value"), qp)
        if q.get("type") not in QUERY_TYPES:
            v.add(join(qp, "type"), f"must be one of: {', '.join(QUERY_TYPES)}")
        name = v.string(q.get("name"), join(qp, "name"))
        if name is not None:
            if name in seen:
                v.add(join(qp, "name"), f"query parameter {name!r} is matched more than once in this match")
            seen.add(name)
        value = v.string(q.get("value"), join(qp, "value"))
        if value is not None and q.get("type") == REGEX:
            check_regex(v, value, join(qp, "value"))
