"""Kuma's data sources, resolved in one place: `{file: path}`, `{inline: base64}`, `{inlineString: text}` and
`{secret: name}` (a Secret of the resource's mesh).

Anything that reads material from a data source (a provided CA's cert and key, a MeshExternalService's CA
certificate) calls this module, so every caller accepts the same four forms with the same messages. Resolution is
split in two so the part that parses stays pure: `secret_names` says which Secrets a data source needs,
`fetch_secrets` reads them from the store, and `load` turns the data source plus those values into text.
`resolve` does all three for one data source.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dpagent.controlplane.store import ResourceStore

SECRET_KIND = "Secret"
KEYS = ("file", "inline", "inlineString", "secret")


class DataSourceError(ValueError):
    """What is wrong with a data source; `field` is the key inside it at fault ("" for the source itself), so the
    caller can report `<its path>.secret` and the like."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def secret_names(ds: Any) -> set[str]:
    """The Secret a data source names, if it names one (nothing for malformed sources: `load` reports those)."""
    if isinstance(ds, dict) and isinstance(ds.get("secret"), str) and ds["secret"]:
        return {ds["secret"]}
    return set()


def secret_refs(doc: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, secret name) of every `{secret: name}` data source anywhere in a document: what a resource uses, so a
    Secret change can reach it and a Secret in use is not deleted from under it."""
    if isinstance(doc, dict):
        if set(doc) == {"secret"} and isinstance(doc["secret"], str):
            yield (f"{path}.secret" if path else "secret"), doc["secret"]
            return
        for k, v in doc.items():
            yield from secret_refs(v, f"{path}.{k}" if path else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from secret_refs(v, f"{path}[{i}]")


async def fetch_secrets(store: ResourceStore, mesh: str, names: Iterable[str]) -> dict[str, bytes]:
    """The decoded data of the named Secrets of `mesh` that exist; a missing one is left out (`load` says so)."""
    out: dict[str, bytes] = {}
    for name in sorted(set(names)):
        rec = await store.get(SECRET_KIND, mesh, name)
        if rec is None:
            continue
        try:
            out[name] = base64.b64decode(rec.doc.get("data") or "", validate=True)
        except (binascii.Error, TypeError):
            continue  # validation keeps these out; a hand-edited row reads as missing rather than as garbage
    return out


def load(ds: Any, secrets: Mapping[str, bytes] | None = None, *, mesh: str = "") -> str:
    """The text a data source holds. `secrets` are the mesh's Secrets it may name (from `fetch_secrets`)."""
    if not isinstance(ds, dict) or len(ds) != 1:
        raise DataSourceError(f"must have exactly one of {', '.join(KEYS)}")
    (kind, value), = ds.items()
    if not isinstance(value, str) or not value:
        raise DataSourceError(f"{kind} must be a non-empty string")
    if kind == "file":
        try:
            return Path(value).read_text()
        except OSError as e:
            raise DataSourceError(f"cannot read {value} on the control plane host: {e.strerror}", "file") from None
    if kind == "inlineString":
        return value
    if kind == "inline":
        if value.lstrip().startswith("-----BEGIN"):
            return value
        try:
            return base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise DataSourceError("must be base64 of PEM text (or use inlineString for PEM)", "inline") from None
    if kind == "secret":
        data = (secrets or {}).get(value)
        where = f' in mesh "{mesh}"' if mesh else ""
        if data is None:
            raise DataSourceError(f'Secret "{value}" does not exist{where}; create it first (dpagent apply -f '
                                  f"a file with type: Secret, mesh, name: {value}, data: <base64>)", "secret")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise DataSourceError(f'Secret "{value}" does not hold text (PEM expected)', "secret") from None
    raise DataSourceError(f"unknown data source {kind!r}; use one of {', '.join(KEYS)}")


def uses_secrets(doc: Any) -> bool:
    """Whether a stored resource names any Secret in its spec."""
    return isinstance(doc, dict) and next(secret_refs(doc.get("spec")), None) is not None


def inline_secrets(doc: Any, secrets: Mapping[str, bytes]) -> Any:
    """`doc` with every `{secret: name}` whose Secret is in `secrets` replaced by `{inlineString: text}`, so parsing
    stays free of store reads. Unknown or non-text Secrets stay as they are, for `load` to name the problem."""
    if isinstance(doc, dict):
        if set(doc) == {"secret"} and isinstance(doc["secret"], str):
            try:
                return {"inlineString": secrets[doc["secret"]].decode()}
            except (KeyError, UnicodeDecodeError):
                return doc
        return {k: inline_secrets(v, secrets) for k, v in doc.items()}
    if isinstance(doc, list):
        return [inline_secrets(v, secrets) for v in doc]
    return doc


async def resolve(store: ResourceStore, mesh: str, ds: Any) -> str:
    """`load` for one data source, reading the Secret it names from `mesh`."""
    return load(ds, await fetch_secrets(store, mesh, secret_names(ds)), mesh=mesh)
