"""Resource semantics above the raw store: validation, mesh existence, cascades, and side effects of a Mesh.

Both the REST API and `/bootstrap` (direct lifecycle) create resources through here, so they cannot disagree
about what is valid.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from dpagent.controlplane import datasource, secrets
from dpagent.controlplane.kinds import Kind, by_type
from dpagent.controlplane.store import AuditEntry, Record, ResourceStore
from dpagent.errors import Conflict, NotFound, ValidationError
from dpagent.model.validation import Violations

_META = ("creationTime", "modificationTime")


@dataclasses.dataclass(frozen=True)
class Applied:
    record: Record | None  # None on a dry run
    created: bool


def record_to_doc(rec: Record) -> dict[str, Any]:
    """The resource as the API shows it: Kuma's envelope with timestamps."""
    from datetime import UTC, datetime

    def ts(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")

    k = by_type(rec.kind)
    doc = k.shown(rec.doc) if k else dict(rec.doc)
    doc["creationTime"] = ts(rec.created)
    doc["modificationTime"] = ts(rec.modified)
    return doc


REDACTED = "<redacted>"
_SECRET_SOURCES = ("inline", "inlineString")


def _backend_keys(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(backend name, its conf.key data source) for every backend that has one."""
    out = []
    backends = (doc.get("mtls") or {}).get("backends") if isinstance(doc.get("mtls"), dict) else None
    for b in backends if isinstance(backends, list) else []:
        conf = b.get("conf") if isinstance(b, dict) else None
        if isinstance(conf, dict) and isinstance(conf.get("key"), dict):
            out.append((str(b.get("name")), conf["key"]))
    return out


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Mesh with inline private keys replaced by a marker: key material never leaves the CP.

    Applying the document back unchanged keeps the stored key (see `unredact`).
    """
    import copy

    out = copy.deepcopy(doc)
    for _, key in _backend_keys(out):
        for field in _SECRET_SOURCES:
            if field in key:
                key[field] = REDACTED
    return out


def unredact(doc: dict[str, Any], stored: dict[str, Any] | None) -> None:
    """Put the stored key back where a re-applied document still carries the redaction marker."""
    kept = {name: key for name, key in _backend_keys(stored or {})}
    for name, key in _backend_keys(doc):
        for field in _SECRET_SOURCES:
            if key.get(field) == REDACTED and field in kept.get(name, {}):
                key[field] = kept[name][field]


async def _provided_ca_problems(store: ResourceStore, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """A provided CA is checked when the Mesh is applied, not at the first certificate request: its data sources
    resolve (a named Secret exists in the mesh) and the pair is a usable CA."""
    from dpagent.controlplane.identity import provided_problems, provided_secret_names
    from dpagent.model.mesh import parse_mesh

    mesh = parse_mesh(doc)
    provided = [(i, b) for i, b in enumerate(mesh.mtls.backends if mesh.mtls else []) if b.type == "provided"]
    names = set().union(*(provided_secret_names(b) for _, b in provided)) if provided else set()
    found = await datasource.fetch_secrets(store, mesh.name, names)

    def check() -> list[tuple[str, str]]:
        return [(f"mtls.backends[{i}].{field}", msg)
                for i, backend in provided for field, msg in provided_problems(backend, found, mesh.name)]

    return await asyncio.to_thread(check)


def _label_problems(doc: dict[str, Any], mesh_scoped: bool) -> list[tuple[str, str]]:
    """Labels are envelope, so every kind gets the same check here, whether or not its model checks them too."""
    v = Violations()
    mesh = doc.get("mesh")
    v.labels(doc.get("labels"), (mesh if isinstance(mesh, str) else "") if mesh_scoped else None)
    return v.items


class Resources:
    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    async def apply(self, doc: Any, *, kind: Kind | None = None, mesh: str | None = None, name: str | None = None,
                    dry_run: bool = False, audit: AuditEntry | None = None) -> Applied:
        """Create or update. `kind`/`mesh`/`name` come from the URL when the API is used; they must agree.
        `audit` is stored in the write's own transaction."""
        if not isinstance(doc, dict):
            raise ValidationError("resource", [("$", "must be an object with type, name (and mesh)")])
        doc = {k: v for k, v in doc.items() if k not in _META}
        problems: list[tuple[str, str]] = []
        type_name = doc.get("type") or (kind.name if kind else None)
        k = by_type(type_name) if isinstance(type_name, str) else None
        if k is None:
            raise ValidationError("resource", [("type", f"unknown type {type_name!r}")])
        if kind and k is not kind:
            problems.append(("type", f"must be {kind.name} to be sent to this path, not {type_name}"))
        doc["type"] = k.name
        if name is not None and doc.get("name", name) != name:
            problems.append(("name", f"{doc.get('name')!r} does not match the name in the URL ({name!r})"))
        doc.setdefault("name", name)
        if k.mesh_scoped:
            if mesh is not None and doc.get("mesh", mesh) != mesh:
                problems.append(("mesh", f"{doc.get('mesh')!r} does not match the mesh in the URL ({mesh!r})"))
            doc.setdefault("mesh", mesh)
        elif "mesh" in doc:
            problems.append(("mesh", f"{k.name} is not mesh-scoped; remove the mesh field"))
        if k.restore and isinstance(doc.get("name"), str):
            res_mesh = doc.get("mesh") if k.mesh_scoped else ""
            stored = await self.store.get(k.name, res_mesh, doc["name"]) if isinstance(res_mesh, str) else None
            if stored is not None and k.is_hidden(stored.name):
                stored = None
            k.restore_redacted(doc, stored.doc if stored else None)
        problems += k.validate(doc)
        problems += [p for p in _label_problems(doc, k.mesh_scoped) if p not in problems]
        if k.name == "Mesh" and not problems:
            problems += await _provided_ca_problems(self.store, doc)
        if problems:
            raise ValidationError(f"{k.name} {doc.get('name')!r}", problems)
        res_mesh = doc["mesh"] if k.mesh_scoped else ""
        if k.mesh_scoped and await self.store.get("Mesh", "", res_mesh) is None:
            raise ValidationError(f"{k.name} {doc['name']!r}", [
                ("mesh", f'mesh "{res_mesh}" does not exist; create it first (dpagent apply -f mesh.yaml)')])
        existing = await self.store.get(k.name, res_mesh, doc["name"])
        if dry_run:
            return Applied(None, existing is None)
        rec = await self.store.upsert(k.name, res_mesh, doc["name"], doc, audit=audit)
        if k.name == "Mesh":
            await self._mesh_side_effects(doc)
            if existing is None:
                await self._initial_policies(doc)
        return Applied(rec, existing is None)

    async def _mesh_side_effects(self, doc: dict[str, Any]) -> None:
        """A mesh needs a token signing key at once, and builtin CAs before the first certificate request."""
        mesh = doc["name"]
        await secrets.ensure_signing_key(self.store, mesh)
        for backend in (doc.get("mtls") or {}).get("backends") or []:
            if backend.get("type") == "builtin":
                key_type = "rsa" if ((backend.get("conf") or {}).get("caCert") or {}).get("RSAbits") else "ecdsa-p256"
                await secrets.builtin_ca(self.store, mesh, backend["name"], key_type)

    async def _initial_policies(self, doc: dict[str, Any]) -> None:
        """Kuma's default policies of every registered kind, made once when the mesh is created; a policy of that
        name that already exists is kept as it is (the user's)."""
        from dpagent.controlplane.policies.registry import PLUGINS

        skip = set(doc.get("skipCreatingInitialPolicies") or ())
        if "*" in skip:
            return
        for plugin in PLUGINS:
            if plugin.kind in skip:
                continue
            for policy in plugin.initial_policies(doc["name"]):
                if await self.store.get(plugin.kind, doc["name"], policy["name"]) is None:
                    await self.apply(policy)

    async def get(self, k: Kind, mesh: str, name: str) -> Record:
        rec = await self.store.get(k.name, mesh if k.mesh_scoped else "", name)
        if rec is None or k.is_hidden(name):
            where = f' in mesh "{mesh}"' if k.mesh_scoped else ""
            raise NotFound(f'{k.name} "{name}"{where} not found')
        return rec

    async def list(self, k: Kind, mesh: str | None, offset: int, limit: int | None) -> tuple[list[Record], int]:
        scope = (mesh if k.mesh_scoped else "") if mesh is not None or not k.mesh_scoped else None
        if k.hidden:  # few records (secrets): filter the whole list, then page it
            shown = [r for r in await self.store.list(k.name, mesh=scope) if not k.is_hidden(r.name)]
            return shown[offset:None if limit is None else offset + limit], len(shown)
        items = await self.store.list(k.name, mesh=scope, offset=offset, limit=limit)
        total = await self.store.count(k.name, scope)
        return items, total

    async def secret_users(self, mesh: str, name: str) -> list[str]:
        """Where the mesh refers to Secret `name` (`{secret: name}` data sources): '<Kind> "<name>" at <path>'."""
        from dpagent.controlplane.kinds import KINDS

        docs = [("Mesh", r) for r in [await self.store.get("Mesh", "", mesh)] if r is not None]
        for k in KINDS:
            if k.mesh_scoped and k.name not in ("Dataplane", "Secret"):
                docs += [(k.name, r) for r in await self.store.list(k.name, mesh=mesh)]
        return [f'{kind} "{r.name}" at {path}' for kind, r in docs
                for path, ref in datasource.secret_refs(r.doc) if ref == name]

    async def delete(self, k: Kind, mesh: str, name: str, audit: AuditEntry | None = None) -> Record:
        rec = await self.get(k, mesh, name)
        if k.name == "Secret" and (users := await self.secret_users(rec.mesh, name)):
            raise Conflict(f'Secret "{name}" is in use by {"; ".join(users)}; point those at another data source '
                           "first, then delete it")
        deleted = await self.store.delete(k.name, rec.mesh, name, audit=audit)
        if k.name == "Mesh":
            await self.store.delete_mesh_scoped(name)
        return deleted
