"""HTTP header matches as every HTTP policy writes them: the `{type, name, value}` schema of MeshHTTPRoute's
`matches[].headers` and MeshRetry's retriable request/response headers, their collect-every-violation validation,
and the Envoy matcher they become. Header names follow Kuma's rule wherever a policy names a header (MeshRateLimit's
response headers too), so one definition keeps the policies from drifting apart."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from dpagent.model.validation import Violations, join

EXACT, PREFIX, REGEX, PRESENT, ABSENT = "Exact", "Prefix", "RegularExpression", "Present", "Absent"
HEADER_TYPES = (EXACT, PRESENT, REGEX, ABSENT, PREFIX)
# HTTP token characters (RFC 9110), lower case only, as Kuma requires of header names.
HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]{1,256}$")
# RE2 (Envoy's engine) has no lookaround and no backreferences; Python's `re` accepts both.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


class HeaderMatch(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    name: str
    type: str = EXACT
    value: str | None = None


def header_name(v: Violations, raw: Any, path: str) -> str | None:
    name = v.string(raw, path)
    if name is not None and not HEADER_NAME_RE.fullmatch(name):
        v.add(path, "must be 1-256 lower-case HTTP token characters (letters, digits, and !#$%&'*+-.^_`|~)")
        return None
    return name


def check_regex(v: Violations, value: str, path: str) -> None:
    """Not one of Kuma's checks: a pattern Envoy cannot compile makes it reject the whole listener, so refuse the
    patterns that are not regular expressions at all here, where the user sees the path."""
    try:
        re.compile(value)
    except re.error as e:
        v.add(path, f"is not a valid regular expression ({e})")
        return
    if _NOT_RE2.search(value):
        v.add(path, "uses lookaround or a backreference, which Envoy's RE2 engine does not support")


def validate_header_match(v: Violations, raw: Any, path: str) -> None:
    h = v.mapping(raw, path)
    if h is None:
        return
    v.unknown(h, ("type", "name", "value"), path)
    kind = h.get("type", EXACT)
    if kind not in HEADER_TYPES:
        v.add(join(path, "type"), f"must be one of: {', '.join(HEADER_TYPES)}")
    header_name(v, h.get("name"), join(path, "name"))
    value = h.get("value")
    if kind in (PRESENT, ABSENT) and value is not None:
        v.add(join(path, "value"), f"must not be set with type {kind}")
    elif value is not None and not isinstance(value, str):
        v.add(join(path, "value"), "must be a string")
    elif kind == REGEX:
        check_regex(v, value or "", join(path, "value"))


def string_matcher(kind: str, value: str) -> string_pb2.StringMatcher:
    """Exact, Prefix or (anything else) RegularExpression: the value kinds headers and query params share."""
    if kind == EXACT:
        return string_pb2.StringMatcher(exact=value)
    if kind == PREFIX:
        return string_pb2.StringMatcher(prefix=value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))


def header_matcher(name: str, kind: str, value: str | None) -> rc.HeaderMatcher:
    """A Prefix with no value matches any value, as Present does."""
    if kind == PRESENT or (kind == PREFIX and not value):
        return rc.HeaderMatcher(name=name, present_match=True)
    if kind == ABSENT:
        return rc.HeaderMatcher(name=name, present_match=False)
    return rc.HeaderMatcher(name=name, string_match=string_matcher(kind, value or ""))
