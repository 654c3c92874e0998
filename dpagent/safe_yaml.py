"""YAML (and JSON) decoding for every untrusted document: CLI files, agent config and templates, REST bodies.

Aliases are refused: a few hundred bytes of nested anchors expand to gigabytes once the result is walked, copied
or stored, which goes around any size limit on the raw text. Nesting is bounded so that a hostile document fails
here with a message instead of as a RecursionError deep inside validation or JSON encoding.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

MAX_DEPTH = 64  # far deeper than any resource or config file; deep enough to never bother a real user

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class RefusedYaml(yaml.YAMLError):
    """Well-formed YAML that we still do not accept (aliases, excessive nesting). A YAMLError, so every existing
    `except yaml.YAMLError` reports it like a syntax error."""


def _mark(node: yaml.Node) -> str:
    m = node.start_mark
    return f" (line {m.line + 1}, column {m.column + 1})" if m is not None else ""


def _check_nodes(root: yaml.Node) -> None:
    """One iterative walk: a node reached twice is an alias; a path longer than MAX_DEPTH is refused."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise RefusedYaml(f"YAML aliases (*name) are not accepted{_mark(node)}; write the value out in full")
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise RefusedYaml(f"YAML is nested more than {MAX_DEPTH} levels deep{_mark(node)}")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += ((key, depth + 1), (value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack += ((item, depth + 1) for item in node.value)


class _Loader(_BaseLoader):  # type: ignore[misc]
    def construct_document(self, node: yaml.Node) -> Any:
        _check_nodes(node)
        return super().construct_document(node)


class _Dumper(_BaseDumper):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True  # what we write must load with `load` on the other side


def load(text: str | bytes) -> Any:
    """`yaml.safe_load` without aliases and with bounded nesting; errors are `yaml.YAMLError`s."""
    return yaml.load(text, Loader=_Loader)


def load_all(text: str | bytes) -> list[Any]:
    """Every non-empty document of a multi-document stream."""
    return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]


def dump(data: Any, **kw: Any) -> str:
    """`yaml.safe_dump` that writes shared objects out in full, so the output loads with `load`."""
    return yaml.dump(data, Dumper=_Dumper, **kw)


def describe(e: yaml.YAMLError) -> str:
    """One line naming the problem and where, without echoing the offending text back (it may be binary)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        return f"{e.problem}{where}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def depth_exceeded(doc: Any, limit: int = MAX_DEPTH) -> bool:
    """True when a decoded document nests deeper than `limit` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack += ((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack += ((v, depth + 1) for v in item)
    return False


def load_json(raw: str | bytes) -> Any:
    """`json.loads` with the same nesting bound; every failure is a ValueError with a one-line message."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ValueError(f"JSON is nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"JSON is not UTF-8 ({e.reason} at byte {e.start})") from None
    if depth_exceeded(doc):
        raise ValueError(f"JSON is nested more than {MAX_DEPTH} levels deep")
    return doc
