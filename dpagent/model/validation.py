"""Collect-every-violation validation helpers, Kuma style: each problem is (path, message).

We walk the plain decoded document (dict/list) rather than relying on a typed decoder, because typed decoders stop
at the first error and users fixing YAML want the whole list at once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# Kuma 2.14's rules (docs/kuma-compatibility.md). Names are lowercase RFC 1123 subdomains: no '_'.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NAME_MAX = 253
NAME_RULE = ("must be a lowercase RFC 1123 name: letters a-z, digits, '-' and '.', starting and ending with a "
             "letter or digit, at most 253 characters ('_' is not allowed)")
# A resource's `mesh` reference keeps the pre-2.5 character set, so a mesh created with '_' stays reachable.
MESH_REF_RE = re.compile(r"^[0-9a-z\-_.]+$")
REF_RULE = "must be lowercase letters, digits, '-', '_' or '.', at most 253 characters (not only dots)"
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:]+$")
# Labels follow Kubernetes' rules (Kuma checks them that way on Universal too): an optional DNS prefix and '/'.
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
LABEL_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$")
LABEL_VALUE_RE = re.compile(rf"^({_LABEL_NAME})?$")
MESH_LABEL = "kuma.io/mesh"
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

    def typed_block(self, doc: Any, path: str, blocks: Mapping[str, str]) -> tuple[str, Mapping[str, Any]] | None:
        """Kuma's backend shape: `type` names one of `blocks` (type → field) and only that field is set, e.g.
        `{type: File, file: {...}}`. Records every problem; returns (type, its block) when both are usable."""
        backend = self.mapping(doc, path)
        if backend is None:
            return None
        self.unknown(backend, ("type", *blocks.values()), path)
        kind = backend.get("type")
        if kind is None:
            self.add(join(path, "type"), "must be defined")
        elif kind not in blocks:
            self.add(join(path, "type"), f"must be one of: {', '.join(blocks)}")
        if kind not in blocks:
            return None  # the type's own violation says what to fix; the blocks are judged once it names one
        for name, field in blocks.items():
            if name != kind and backend.get(field) is not None:
                self.add(join(path, field), f"must not be defined when type is {kind}")
        block = self.mapping(backend.get(blocks[kind]), join(path, blocks[kind]))
        return None if block is None else (kind, block)

    def document(self, doc: Any, kind: str, fields: tuple[str, ...]) -> Mapping[str, Any] | None:
        """A whole resource document of type `kind`: an object with only `fields` at its top and `type` (when set)
        naming `kind`. Returns the object for the caller to check its own fields."""
        top = self.mapping(doc, "")
        if top is None:
            return None
        self.unknown(top, fields, "")
        if top.get("type", kind) != kind:
            self.add("type", f"must be {kind}, not {top.get('type')!r}")
        return top

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
        if s is not None and not (is_ip(s) or HOST_RE.fullmatch(s)):
            self.add(path, f"{s!r} is not a valid IP address or hostname")
            return None
        return s

    def name(self, doc: Any, path: str) -> str | None:
        s = self.string(doc, path)
        if s is not None and (len(s) > NAME_MAX or not NAME_RE.fullmatch(s)):
            self.add(path, NAME_RULE)
            return None
        return s

    def mesh_ref(self, doc: Any, path: str = "mesh") -> str | None:
        """The mesh a resource belongs to: Kuma's older, '_'-tolerant set (see MESH_REF_RE)."""
        s = self.string(doc, path)
        if s is not None and (problem := _ref_rule(s)):
            self.add(path, problem)
            return None
        return s

    def labels(self, doc: Any, mesh: str | None, path: str = "labels") -> Mapping[str, Any] | None:
        """Kubernetes-style labels; `kuma.io/mesh`, if given, must name the resource's own mesh.

        `mesh` is None for kinds that belong to no mesh: there the label can only contradict the resource; "" means
        the mesh is missing (reported elsewhere), so there is nothing to compare with.
        """
        m = self.mapping(doc, path, required=False)
        if m is None:
            return None
        for k, val in m.items():
            p = f'{path}["{k}"]'
            if not isinstance(k, str) or not LABEL_KEY_RE.fullmatch(k) or len(k.rpartition("/")[0]) > NAME_MAX:
                self.add(p, "label name must be [DNS prefix/]name: the name at most 63 letters, digits, '-', '_' "
                            "or '.', starting and ending with a letter or digit")
            if not isinstance(val, str):
                self.add(p, f"label value must be a string, not {_kind(val)}")
            elif not LABEL_VALUE_RE.fullmatch(val):
                self.add(p, "label value must be at most 63 letters, digits, '-', '_' or '.', starting and "
                            "ending with a letter or digit")
        label_mesh = m.get(MESH_LABEL)
        if label_mesh is not None and mesh != "" and label_mesh != mesh:
            where = f"the resource's mesh {mesh!r}" if mesh is not None else "a resource that belongs to no mesh"
            self.add(f'{path}["{MESH_LABEL}"]', f"{label_mesh!r} contradicts {where}; remove the label or make "
                                                "it match")
        return m

    def unknown(self, doc: Mapping[str, Any], known: Iterable[str], path: str) -> None:
        allowed = set(known)
        for k in doc:
            if k not in allowed:
                self.add(join(path, str(k)), f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def objects(self, items: list[Any], path: str,
                known: Iterable[str]) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
        """(index, path, object) of each item of the list at `path` that is an object with only `known` fields
        (anything else is recorded): the walk every list of objects in a resource starts with."""
        for i, raw in enumerate(items):
            p = f"{path}[{i}]"
            m = self.mapping(raw, p)
            if m is not None:
                self.unknown(m, known, p)
                yield i, p, m

    def tags(self, doc: Any, path: str, required_keys: Iterable[str] = ()) -> Mapping[str, Any] | None:
        m = self.mapping(doc, path, required=bool(required_keys))
        if m is None:
            return None
        for k, v in m.items():
            p = f"{path}[{k!r}]" if not TAG_KEY_RE.fullmatch(str(k)) else f'{path}["{k}"]'
            if not isinstance(k, str) or not TAG_KEY_RE.fullmatch(k):
                self.add(p, "tag name must contain only letters, digits, '.', '-', '_', ':' or '/'")
            if not isinstance(v, str) or not v:
                self.add(p, "tag value must be a non-empty string")
            elif not TAG_VALUE_RE.fullmatch(v):
                self.add(p, "tag value must contain only letters, digits, '.', '-', '_' or ':' (no '/' or '*')")
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


def _ref_rule(s: str) -> str | None:
    if len(s) > NAME_MAX or not MESH_REF_RE.fullmatch(s) or s.strip(".") == "":
        return REF_RULE
    return None


def ref_problem(name: Any) -> str | None:
    """Why `name` cannot name an existing resource (a `mesh` field, a URL segment, a token's claims), or None.

    Looser than name_problem on purpose: a resource stored under Kuma's pre-2.5 rules (a '_' in its name) keeps
    working, so it must stay reachable to be read, inspected, given a new token and deleted. Names made only of
    dots are refused so that none can leave its URL segment."""
    if not isinstance(name, str) or not name:
        return "must be defined" if name is None or name == "" else "must be a string"
    if name.endswith("\n"):  # `$` also matches before a final newline
        return "must not contain a line break"
    return _ref_rule(name)


def name_problem(name: Any) -> str | None:
    """Why `name` is not a valid resource name, or None: the server's rule, for callers outside a validator (the
    CLI checks names before putting them in a URL)."""
    v = Violations()
    v.name(name, "name")
    if not v.items and isinstance(name, str) and name.endswith("\n"):  # `$` also matches before a final newline
        return "must not contain a line break"
    return v.items[0][1] if v.items else None
