"""RFC 6902 JSON Patch over plain JSON values (dicts, lists, scalars), as MeshProxyPatch applies it to the protojson
form of an Envoy resource. Small and dependency-free; the input is never mutated so a failed patch leaves nothing
half-applied."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

OPS = ("add", "remove", "replace", "move", "copy", "test")


class PatchError(ValueError):
    pass


def pointer(path: str) -> list[str]:
    """The reference tokens of a JSON pointer (RFC 6901): `~1` is `/`, `~0` is `~`."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"path {path!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, append: bool = False) -> int:
    if append and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{path}: {token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not append):
        raise PatchError(f"{path}: index {i} is out of range")
    return i


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for t in tokens[:-1]:
        if isinstance(node, dict):
            if t not in node:
                raise PatchError(f"{path}: {t!r} does not exist")
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(node, t, path)]
        else:
            raise PatchError(f"{path}: {t!r} is inside a value that is neither an object nor an array")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path}: {last!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path)]
    raise PatchError(f"{path}: not found")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, append=True), value)
    else:
        raise PatchError(f"{path}: the parent is neither an object nor an array")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = pointer(path)
    if not tokens:
        raise PatchError("the whole document cannot be removed")
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path}: {last!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, path))
    raise PatchError(f"{path}: not found")


def apply(doc: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """`doc` with every operation applied in order; PatchError names the first one that cannot apply."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            out = _add(out, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            out, _ = _remove(out, path)
        elif kind == "replace":
            _get(out, path)  # the target must exist
            if pointer(path):
                out, _ = _remove(out, path)
            out = _add(out, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            src = op.get("from", "")
            if path.startswith(src + "/"):
                raise PatchError(f"{path}: cannot move {src} into itself")
            out, value = _remove(out, src)
            out = _add(out, path, value)
        elif kind == "copy":
            out = _add(out, path, copy.deepcopy(_get(out, op.get("from", ""))))
        elif kind == "test":
            if _get(out, path) != op.get("value"):
                raise PatchError(f"{path}: test failed")
        else:
            raise PatchError(f"unknown op {kind!r}")
    return out
