"""Control-plane secrets kept in the store: token signing keys, token revocations, and mesh CA material.

They use Kuma's secret names (`dataplane-token-signing-key-<mesh>-<serial>`, `dataplane-token-revocations-<mesh>`,
`<mesh>.ca-builtin-cert-<backend>`) so an operator who knows Kuma finds them where expected. Secrets are never
served by the REST API.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from dpagent.controlplane import ca as ca_mod
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.tokens import SigningKey, generate_signing_key

SECRET = "Secret"
_SIGNING_PREFIX = "dataplane-token-signing-key-"


def _doc(mesh: str, name: str, data: str) -> dict[str, Any]:
    return {"type": "Secret", "mesh": mesh, "name": name, "data": base64.b64encode(data.encode()).decode()}


def _data(doc: dict[str, Any]) -> str:
    return base64.b64decode(doc.get("data", "")).decode()


async def signing_keys(store: ResourceStore, mesh: str) -> list[SigningKey]:
    prefix = f"{_SIGNING_PREFIX}{mesh}-"
    out = []
    for rec in await store.list(SECRET, mesh=mesh):
        if rec.name.startswith(prefix) and rec.name[len(prefix):].isdigit():
            out.append(SigningKey(mesh=mesh, serial=int(rec.name[len(prefix):]), private_pem=_data(rec.doc)))
    return sorted(out, key=lambda k: k.serial)


async def ensure_signing_key(store: ResourceStore, mesh: str) -> SigningKey:
    keys = await signing_keys(store, mesh)
    if keys:
        return keys[-1]
    key = await asyncio.to_thread(generate_signing_key, mesh, 1)
    await store.upsert(SECRET, mesh, f"{_SIGNING_PREFIX}{mesh}-1", _doc(mesh, f"{_SIGNING_PREFIX}{mesh}-1",
                                                                         key.private_pem))
    return key


async def rotate_signing_key(store: ResourceStore, mesh: str) -> SigningKey:
    """Add serial n+1; new tokens use it, old tokens stay valid until their key is deleted."""
    keys = await signing_keys(store, mesh)
    serial = (keys[-1].serial + 1) if keys else 1
    key = await asyncio.to_thread(generate_signing_key, mesh, serial)
    name = f"{_SIGNING_PREFIX}{mesh}-{serial}"
    await store.upsert(SECRET, mesh, name, _doc(mesh, name, key.private_pem))
    return key


def _revocations_name(mesh: str) -> str:
    return f"dataplane-token-revocations-{mesh}"


async def revoked(store: ResourceStore, mesh: str) -> frozenset[str]:
    rec = await store.get(SECRET, mesh, _revocations_name(mesh))
    if rec is None:
        return frozenset()
    return frozenset(j for j in _data(rec.doc).split(",") if j)


async def revoke(store: ResourceStore, mesh: str, jti: str) -> None:
    current = set(await revoked(store, mesh))
    current.add(jti)
    name = _revocations_name(mesh)
    await store.upsert(SECRET, mesh, name, _doc(mesh, name, ",".join(sorted(current))))


def _ca_names(mesh: str, backend: str) -> tuple[str, str]:
    return f"{mesh}.ca-builtin-cert-{backend}", f"{mesh}.ca-builtin-key-{backend}"


async def builtin_ca(store: ResourceStore, mesh: str, backend: str, key_type: str = "ecdsa-p256") -> tuple[str, str]:
    """The (cert, key) PEMs of a builtin CA backend, generated on first use and kept in the store."""
    cert_name, key_name = _ca_names(mesh, backend)
    cert = await store.get(SECRET, mesh, cert_name)
    key = await store.get(SECRET, mesh, key_name)
    if cert and key:
        return _data(cert.doc), _data(key.doc)
    cert_pem, key_pem = await asyncio.to_thread(ca_mod.generate_root_ca, mesh, backend, key_type)
    await store.upsert(SECRET, mesh, key_name, _doc(mesh, key_name, key_pem))
    await store.upsert(SECRET, mesh, cert_name, _doc(mesh, cert_name, cert_pem))
    return cert_pem, key_pem


async def existing_builtin_ca(store: ResourceStore, mesh: str, backend: str) -> tuple[str, str] | None:
    """A builtin CA's material if it was ever created; never creates one (for retired backends)."""
    cert_name, key_name = _ca_names(mesh, backend)
    cert = await store.get(SECRET, mesh, cert_name)
    key = await store.get(SECRET, mesh, key_name)
    return (_data(cert.doc), _data(key.doc)) if cert and key else None


async def delete_signing_key(store: ResourceStore, mesh: str, serial: int) -> None:
    """Retire a key: tokens signed with it stop verifying. The newest key cannot be deleted (tokens need one)."""
    from dpagent.errors import ConfigError, NotFound

    keys = await signing_keys(store, mesh)
    if not any(k.serial == serial for k in keys):
        raise NotFound(f"mesh {mesh!r} has no signing key with serial {serial} (it has: "
                       f"{', '.join(str(k.serial) for k in keys) or 'none'})")
    if serial == keys[-1].serial:
        raise ConfigError(f"signing key {serial} is the newest key of mesh {mesh!r}; rotate first "
                          "(`dpagent token signing-key rotate`), then delete the old one")
    await store.delete(SECRET, mesh, f"{_SIGNING_PREFIX}{mesh}-{serial}")
