"""Envoy node ids for dataplanes: Kuma's `<mesh>.<name>`, read by splitting at the first dot.

Kuma can split at the first dot because its mesh names have none; ours may, so a dot (and the escape character
itself) inside a mesh name is percent-escaped. Without that, mesh `x.y` + dataplane `z` and mesh `x` + dataplane
`y.z` were the same id `x.y.z` and one of the two could never connect. For every mesh name without `.` or `%` the
id is exactly Kuma's, so nothing changes for them.
"""

from __future__ import annotations

import re

_UNESCAPE = re.compile(r"%(25|2[eE])")
# Each reading costs a store lookup before the stream is authenticated, so an id may offer only a few.
MAX_READINGS = 8
MAX_LENGTH = 1024  # two escaped 253-character names fit with room to spare


def node_id(mesh: str, name: str) -> str:
    return f"{mesh.replace('%', '%25').replace('.', '%2E')}.{name}"


def parse(node: str) -> tuple[str, str] | None:
    """(mesh, name) of an id made by `node_id`; None when it has no dot at all."""
    mesh, dot, name = node.partition(".")
    if not dot or not mesh or not name:
        return None
    return _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ".", mesh), name


def candidates(node: str) -> list[tuple[str, str]]:
    """Every (mesh, name) the id may stand for, the unambiguous reading first.

    The others are for Envoys still running with a bootstrap from an earlier CP, which joined mesh and name with a
    plain dot (so `a.b.c` may be mesh `a.b`); their token, which names mesh and dataplane, decides among them.
    """
    if len(node) > MAX_LENGTH:
        return []
    first = parse(node)
    out = [first] if first else []
    for i, ch in enumerate(node):
        if len(out) >= MAX_READINGS:
            break
        if ch == "." and 0 < i < len(node) - 1:
            split = (node[:i], node[i + 1:])
            if split not in out:
                out.append(split)
    return out
