"""Collect-every-violation validation helpers, Kuma style: each problem is (path, message).

We walk the plain decoded document (dict/list) rather than relying on a typed decoder, because typed decoders stop
at the first error and users fixing YAML want the whole list at once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.\-_]*[a-z0-9])?$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:/*]+$")
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?"
HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append((path or "$", msg))

    def __bool__(self) -> bool:
        return bool(self.items)

    # -- typed accessors: they record a violation and return None when the value has the wrong shape --

    def mapping(self, doc: Any, path: str, required: bool = True) -> Mapping[str, Any] | None:
        if doc is None:
            if required:
                self.add(path, "must be defined")
            return None
        if not isinstance(doc, Mapping):
            self.add(path, f"must be an object, not {_kind(doc)}")
            return None
        return doc

    def sequence(self, doc: Any, path: str) -> list[Any]:
        if doc is None:
            return []
        if not isinstance(doc, list):
            self.add(path, f"must be a list, not {_kind(doc)}")
            return []
        return doc

    def string(self, doc: Any, path: str, required: bool = True) -> str | None:
        if doc is None or doc == "":
            if required:
                self.add(path, "must be defined")
            return None
        if not isinstance(doc, str):
            self.add(path, f"must be a string, not {_kind(doc)}")
            return None
        return doc

    def port(self, doc: Any, path: str, required: bool = True) -> int | None:
        if doc is None:
            if required:
                self.add(path, "must be defined")
            return None
        if isinstance(doc, bool) or not isinstance(doc, int):
            self.add(path, f"must be a whole number, not {_kind(doc)}")
            return None
        if not 1 <= doc <= 65535:
            self.add(path, "port must be in the range [1, 65535]")
            return None
        return doc

    def ip(self, doc: Any, path: str, required: bool = True) -> str | None:
        s = self.string(doc, path, required)
        if s is not None and not is_ip(s):
            self.add(path, f"{s!r} is not a valid IP address")
            return None
        return s

    def address(self, doc: Any, path: str, required: bool = True) -> str | None:
        s = self.string(doc, path, required)
        if s is not None and not (is_ip(s) or HOST_RE.match(s)):
            self.add(path, f"{s!r} is not a valid IP address or hostname")
            return None
        return s

    def name(self, doc: Any, path: str) -> str | None:
        s = self.string(doc, path)
        if s is not None and (len(s) > 253 or not NAME_RE.match(s)):
            self.add(path, "must be lowercase letters, digits, '-', '.' or '_', starting and ending with a "
                           "letter or digit, at most 253 characters")
            return None
        return s

    def unknown(self, doc: Mapping[str, Any], known: Iterable[str], path: str) -> None:
        allowed = set(known)
        for k in doc:
            if k not in allowed:
                self.add(join(path, str(k)), f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def tags(self, doc: Any, path: str, required_keys: Iterable[str] = ()) -> Mapping[str, Any] | None:
        m = self.mapping(doc, path, required=bool(required_keys))
        if m is None:
            return None
        for k, v in m.items():
            p = f"{path}[{k!r}]" if not TAG_KEY_RE.match(str(k)) else f'{path}["{k}"]'
            if not isinstance(k, str) or not TAG_KEY_RE.match(k):
                self.add(p, "tag name must contain only letters, digits, '.', '-', '_', ':' or '/'")
            if not isinstance(v, str) or not v:
                self.add(p, "tag value must be a non-empty string")
            elif not TAG_VALUE_RE.match(v):
                self.add(p, "tag value must contain only letters, digits, '.', '-', '_', ':', '/' or '*'")
        for k in required_keys:
            if k not in m:
                self.add(f'{path}["{k}"]', "tag is required")
        return m


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(v), type(v).__name__)


def name_problem(name: Any) -> str | None:
    """Why `name` is not a valid resource name, or None: the server's rule, for callers outside a validator (the
    CLI checks names before putting them in a URL)."""
    v = Violations()
    v.name(name, "name")
    if not v.items and isinstance(name, str) and name.endswith("\n"):  # `$` also matches before a final newline
        return "must not contain a line break"
    return v.items[0][1] if v.items else None
