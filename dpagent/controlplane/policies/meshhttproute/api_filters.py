"""Validation of MeshHTTPRoute's `default.filters[]` items (reference kuma-policies.md §2.1, the Filter table):
split from api.py only to keep each module short."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from dpagent.controlplane.policies.meshroute.headers import header_name
from dpagent.controlplane.policies.meshroute.refs import MIRROR_KINDS, validate_ref
from dpagent.model.validation import HOST_RE, Violations, is_ip, join

REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
REQUEST_REDIRECT = "RequestRedirect"
URL_REWRITE = "URLRewrite"
REQUEST_MIRROR = "RequestMirror"
# Filter type → the field holding its settings.
FILTER_FIELDS = {REQUEST_HEADER_MODIFIER: "requestHeaderModifier", RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
                 REQUEST_REDIRECT: "requestRedirect", URL_REWRITE: "urlRewrite", REQUEST_MIRROR: "requestMirror"}
REPLACE_FULL_PATH, REPLACE_PREFIX_MATCH = "ReplaceFullPath", "ReplacePrefixMatch"
REWRITE_FIELDS = {REPLACE_FULL_PATH: "replaceFullPath", REPLACE_PREFIX_MATCH: "replacePrefixMatch"}
SCHEMES = ("http", "https")
STATUS_CODES = (301, 302, 303, 307, 308)
MAX_MODIFIERS = 16



def validate_filter(v: Violations, raw: Any, path: str, all_prefix: bool, gateway: bool) -> bool:
    """Validate one filter; True when it is a RequestRedirect (a gateway rule may then go without backends)."""
    f = v.mapping(raw, path)
    if f is None:
        return False
    v.unknown(f, ("type", *FILTER_FIELDS.values()), path)
    kind = f.get("type")
    if kind not in FILTER_FIELDS:
        v.add(join(path, "type"), f"must be one of: {', '.join(FILTER_FIELDS)}")
        return False
    field = FILTER_FIELDS[kind]
    for other in FILTER_FIELDS.values():
        if other != field and f.get(other) is not None:
            v.add(join(path, other), f"must not be set with type {kind}")
    sub = v.mapping(f.get(field), join(path, field))
    if sub is None:
        return kind == REQUEST_REDIRECT
    p = join(path, field)
    if kind in (REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER):
        _header_modifier(v, sub, p)
    elif kind == REQUEST_REDIRECT:
        v.unknown(sub, ("scheme", "hostname", "path", "port", "statusCode"), p)
        if sub.get("scheme") is not None and sub.get("scheme") not in SCHEMES:
            v.add(join(p, "scheme"), f"must be one of: {', '.join(SCHEMES)}")
        _hostname(v, sub.get("hostname"), join(p, "hostname"))
        _path_rewrite(v, sub.get("path"), join(p, "path"), all_prefix)
        v.port(sub.get("port"), join(p, "port"), required=False)
        if sub.get("statusCode") is not None and sub.get("statusCode") not in STATUS_CODES:
            v.add(join(p, "statusCode"), f"must be one of: {', '.join(map(str, STATUS_CODES))}")
    elif kind == URL_REWRITE:
        v.unknown(sub, ("hostname", "path", "hostToBackendHostname"), p)
        _hostname(v, sub.get("hostname"), join(p, "hostname"))
        _path_rewrite(v, sub.get("path"), join(p, "path"), all_prefix)
        h2b = sub.get("hostToBackendHostname")
        if h2b is not None and not isinstance(h2b, bool):
            v.add(join(p, "hostToBackendHostname"), "must be true or false")
        elif h2b and not gateway:
            v.add(join(p, "hostToBackendHostname"), "can only be used with a MeshGateway top-level targetRef")
        elif h2b and sub.get("hostname") is not None:
            v.add(join(p, "hostToBackendHostname"), "must not be set together with hostname")
    else:
        v.unknown(sub, ("backendRef", "percentage"), p)
        validate_ref(v, sub.get("backendRef"), join(p, "backendRef"), MIRROR_KINDS, backend=True)
        if sub.get("percentage") is not None:
            check_percentage(v, sub.get("percentage"), join(p, "percentage"))
    return kind == REQUEST_REDIRECT


def _header_modifier(v: Violations, sub: Mapping[str, Any], path: str) -> None:
    v.unknown(sub, ("set", "add", "remove"), path)
    if not any(sub.get(k) for k in ("set", "add", "remove")):
        v.add(path, "must define at least one of: set, add, remove")
    seen: dict[str, str] = {}

    def once(name: str | None, at: str) -> None:
        if name is None:
            return
        if name.lower() in seen:
            v.add(at, f"header {name!r} is already modified at {seen[name.lower()]}")
        else:
            seen[name.lower()] = at

    for key in ("set", "add", "remove"):
        items = v.sequence(sub.get(key), join(path, key))
        if len(items) > MAX_MODIFIERS:
            v.add(join(path, key), f"must have at most {MAX_MODIFIERS} items")
        for i, raw in enumerate(items):
            p = f"{join(path, key)}[{i}]"
            if key == "remove":
                once(header_name(v, raw, p), p)
                continue
            hv = v.mapping(raw, p)
            if hv is None:
                continue
            v.unknown(hv, ("name", "value"), p)
            once(header_name(v, hv.get("name"), join(p, "name")), p)
            if not isinstance(hv.get("value"), str):
                v.add(join(p, "value"), "must be defined as a string")


def _hostname(v: Violations, raw: Any, path: str) -> None:
    host = v.string(raw, path, required=False)
    if host is not None and (is_ip(host) or not HOST_RE.fullmatch(host) or host != host.lower()):
        v.add(path, "must be a lower-case DNS name (RFC 1123), not an IP address")


def _path_rewrite(v: Violations, raw: Any, path: str, all_prefix: bool) -> None:
    pr = v.mapping(raw, path, required=False)
    if pr is None:
        return
    v.unknown(pr, ("type", *REWRITE_FIELDS.values()), path)
    kind = pr.get("type")
    if kind not in REWRITE_FIELDS:
        v.add(join(path, "type"), f"must be one of: {', '.join(REWRITE_FIELDS)}")
        return
    field = REWRITE_FIELDS[kind]
    for other in REWRITE_FIELDS.values():
        if other != field and pr.get(other) is not None:
            v.add(join(path, other), f"must not be set with type {kind}")
    value = v.string(pr.get(field), join(path, field))
    if value is not None and not value.startswith("/"):
        v.add(join(path, field), "must start with '/'")
    if kind == REPLACE_PREFIX_MATCH and not all_prefix:
        v.add(join(path, field), "can only be used when every match of the rule is a PathPrefix path match")


def check_percentage(v: Violations, raw: Any, path: str) -> None:
    try:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise InvalidOperation
        value = Decimal(raw)
    except InvalidOperation:
        v.add(path, "must be a whole number or a decimal string such as \"12.5\"")
        return
    if not value.is_finite() or not 0 <= value <= 100:
        v.add(path, "must be between 0 and 100")
