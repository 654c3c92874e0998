"""Control-plane secrets kept in the store: token signing keys, token revocations, and mesh CA material.

They use Kuma's secret names (`dataplane-token-signing-key-<mesh>-<serial>`, `dataplane-token-revocations-<mesh>`,
`<mesh>.ca-builtin-cert-<backend>`) so an operator who knows Kuma finds them where expected. Secrets are never
served by the REST API.

Several CP replicas (or concurrent requests on one) may write these at once, so nothing here is read-then-upsert:
new keys and CAs are created only if absent (the loser adopts the winner's), and the revocation list is
changed by compare-and-swap on its version, retried until it lands.
"""

from __future__ import annotations

import asyncio
import base64
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dpagent.controlplane import ca as ca_mod
from dpagent.controlplane.store import AuditEntry, ResourceStore
from dpagent.controlplane.tokens import SigningKey, generate_signing_key
from dpagent.errors import Conflict

T = TypeVar("T")

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


async def retry_on_conflict(step: Callable[[], Awaitable[T]], what: str, attempts: int = 200) -> T:
    """Run a read-check-write `step` until its conditional write lands; a Conflict means another writer won the
    round, so read again. Jittered pauses spread out writers that keep colliding."""
    for attempt in range(attempts):
        try:
            return await step()
        except Conflict:
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
    raise Conflict(f"{what}: still conflicting with other writers after {attempts} attempts; retry the request")


async def ensure_signing_key(store: ResourceStore, mesh: str) -> SigningKey:
    """The mesh's newest signing key, creating key 1 if there is none. Two callers racing get the same key: a
    second key 1 would silently invalidate every token signed with the first."""
    keys = await signing_keys(store, mesh)
    if keys:
        return keys[-1]
    key = await asyncio.to_thread(generate_signing_key, mesh, 1)
    name = f"{_SIGNING_PREFIX}{mesh}-1"
    try:
        await store.create(SECRET, mesh, name, _doc(mesh, name, key.private_pem))
    except Conflict:
        return (await signing_keys(store, mesh))[-1]
    return key


async def rotate_signing_key(store: ResourceStore, mesh: str, audit: AuditEntry | None = None) -> SigningKey:
    """Add serial n+1; new tokens use it, old tokens stay valid until their key is deleted. Never overwrites a
    key: when another rotation took serial n+1 first, this one becomes n+2."""
    pem = (await asyncio.to_thread(generate_signing_key, mesh, 0)).private_pem  # RSA: made once, not per retry

    async def step() -> SigningKey:
        keys = await signing_keys(store, mesh)
        key = SigningKey(mesh=mesh, serial=(keys[-1].serial + 1) if keys else 1, private_pem=pem)
        name = f"{_SIGNING_PREFIX}{mesh}-{key.serial}"
        await store.create(SECRET, mesh, name, _doc(mesh, name, pem), audit=audit)
        return key

    return await retry_on_conflict(step, f"rotating the signing key of mesh {mesh!r}")


#: Per store and mesh; see `revoke`.
_revoke_locks: weakref.WeakKeyDictionary[ResourceStore, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _revocations_name(mesh: str) -> str:
    return f"dataplane-token-revocations-{mesh}"


def _revoked_in(doc: dict[str, Any] | None) -> frozenset[str]:
    return frozenset() if doc is None else frozenset(j for j in _data(doc).split(",") if j)


async def revoked(store: ResourceStore, mesh: str) -> frozenset[str]:
    rec = await store.get(SECRET, mesh, _revocations_name(mesh))
    return _revoked_in(rec.doc if rec else None)


async def revoke(store: ResourceStore, mesh: str, jti: str, audit: AuditEntry | None = None) -> None:
    """Add `jti` to the mesh's revocation list. A compare-and-swap on the list's version: a plain read-then-write
    let two concurrent revocations each drop the other's token, leaving a revoked token valid."""
    name = _revocations_name(mesh)
    locks = _revoke_locks.setdefault(store, {})

    async def step() -> None:
        rec = await store.get(SECRET, mesh, name)
        current = _revoked_in(rec.doc if rec else None)
        if jti in current:
            return
        doc = _doc(mesh, name, ",".join(sorted(current | {jti})))
        if rec is None:
            await store.create(SECRET, mesh, name, doc, audit=audit)
        else:
            await store.update(SECRET, mesh, name, doc, version=rec.version, audit=audit)

    # Revocations through this store take turns: only other replicas' writes can then make the swap fail, instead
    # of every concurrent request here colliding with every other (100 at once took seconds).
    async with locks.setdefault(mesh, asyncio.Lock()):
        await retry_on_conflict(step, f"revoking token {jti} in mesh {mesh!r}")


def _ca_names(mesh: str, backend: str) -> tuple[str, str]:
    return f"{mesh}.ca-builtin-cert-{backend}", f"{mesh}.ca-builtin-key-{backend}"


async def builtin_ca(store: ResourceStore, mesh: str, backend: str, key_type: str = "ecdsa-p256", *,
                     wait: float = 10.0) -> tuple[str, str]:
    """The (cert, key) PEMs of a builtin CA backend, generated on first use and kept in the store.

    Creating the key record is the claim: of any number of racing callers, on any replica, one creates it and
    then its certificate; the others adopt that pair. Two CAs for one backend would split the mesh in two trust
    domains (or pair a certificate with another CA's key). A claimer that stops between key and certificate is
    completed by the next caller after `wait` seconds, with a certificate for the stored key.
    """
    found = await existing_builtin_ca(store, mesh, backend)
    if found:
        return found
    cert_name, key_name = _ca_names(mesh, backend)
    cert_pem, key_pem = await asyncio.to_thread(ca_mod.generate_root_ca, mesh, backend, key_type)
    try:
        await store.create(SECRET, mesh, key_name, _doc(mesh, key_name, key_pem))
    except Conflict:
        return await _adopt_ca(store, mesh, backend, wait)
    # Ours by claim; a certificate without a key (left by a partial delete) is replaced, since it cannot be used.
    await store.upsert(SECRET, mesh, cert_name, _doc(mesh, cert_name, cert_pem))
    return cert_pem, key_pem


async def _adopt_ca(store: ResourceStore, mesh: str, backend: str, wait: float) -> tuple[str, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        found = await existing_builtin_ca(store, mesh, backend)
        if found:
            return found
        await asyncio.sleep(0.05)
    cert_name, key_name = _ca_names(mesh, backend)
    key = await store.get(SECRET, mesh, key_name)
    if key is None:  # deleted meanwhile: start over
        return await builtin_ca(store, mesh, backend, wait=wait)
    key_pem = _data(key.doc)
    cert_pem, _ = await asyncio.to_thread(ca_mod.generate_root_ca, mesh, backend, key_pem=key_pem)
    try:
        await store.create(SECRET, mesh, cert_name, _doc(mesh, cert_name, cert_pem))
    except Conflict:
        found = await existing_builtin_ca(store, mesh, backend)
        if found:
            return found
    return cert_pem, key_pem


async def existing_builtin_ca(store: ResourceStore, mesh: str, backend: str) -> tuple[str, str] | None:
    """A builtin CA's material if it was ever created; never creates one (for retired backends)."""
    cert_name, key_name = _ca_names(mesh, backend)
    cert = await store.get(SECRET, mesh, cert_name)
    key = await store.get(SECRET, mesh, key_name)
    return (_data(cert.doc), _data(key.doc)) if cert and key else None


async def delete_signing_key(store: ResourceStore, mesh: str, serial: int, audit: AuditEntry | None = None) -> None:
    """Retire a key: tokens signed with it stop verifying. The newest key cannot be deleted (tokens need one)."""
    from dpagent.errors import ConfigError, NotFound

    keys = await signing_keys(store, mesh)
    if not any(k.serial == serial for k in keys):
        raise NotFound(f"mesh {mesh!r} has no signing key with serial {serial} (it has: "
                       f"{', '.join(str(k.serial) for k in keys) or 'none'})")
    if serial == keys[-1].serial:
        raise ConfigError(f"signing key {serial} is the newest key of mesh {mesh!r}; rotate first "
                          "(`dpagent token signing-key rotate`), then delete the old one")
    await store.delete(SECRET, mesh, f"{_SIGNING_PREFIX}{mesh}-{serial}", audit=audit)
