"""RFC 7396 JSON merge patch over policy `default` confs, applied least → most specific.

Kept generic so every policy with mergeable optional fields (timeouts, retries, ...) gets the same "unset differs
from zero, null deletes" behaviour that Kuma users rely on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply one RFC 7396 patch; never mutates its inputs, so cached confs stay shareable."""
    if not isinstance(patch, Mapping):
        return patch
    out: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif _appended(key) and isinstance(value, list):
            out[key] = [*(out.get(key) or []), *value]
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _appended(key: str) -> bool:
    """Kuma concatenates lists named `append<Something>` in priority order instead of replacing them
    (MeshMetric `appendProfiles`, MeshProxyPatch `appendModifications`, MeshPassthrough `appendMatch`)."""
    return key.startswith("append") and key[6:7].isupper()


def merge_confs(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold confs in order: later (more specific) ones win field by field."""
    out: dict[str, Any] = {}
    for conf in confs:
        out = merge_patch(out, conf)
    return out
