"""Secrets encrypted at rest: a store wrapper that seals the `data` of every Secret and GlobalSecret record.

Everything above the store (the API, CA code, token keys) keeps reading and writing plain documents; only what
reaches SQLite or PostgreSQL is ciphertext, so a copied `store.db`, a database dump or a backup holds no key
material in clear. AES-256-GCM with a fresh nonce per write; the record's (kind, mesh, name) is the associated data,
so a ciphertext pasted into another row does not decrypt. The key belongs to the CP, not the store (a key file in the
data dir by default): several replicas sharing one database must share it, which `check_key` enforces at start-up
rather than letting the second replica fail on the first secret it reads.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dpagent.controlplane.store.base import (
    DEFAULT_MAX_PENDING,
    AuditEntry,
    AuditQuery,
    Record,
    ResourceStore,
    Subscription,
)
from dpagent.errors import ConfigError, Conflict, NotFound

SEALED_KINDS = frozenset({"Secret", "GlobalSecret"})
PREFIX = "dpagent-aesgcm-v1:"
KEY_BYTES = 32
KEY_FILE = "secrets.key"
#: A record naming the key the store's secrets are sealed with (its id, never the key).
KEY_CHECK = ("SecretsKeyId", "", "current")


class SecretKeyError(ConfigError):
    """The key is missing, malformed, or not the one the store's secrets were sealed with."""


@dataclasses.dataclass(frozen=True)
class SecretBox:
    key: bytes = dataclasses.field(repr=False)
    source: str = ""  # where the key came from, for messages

    @property
    def kid(self) -> str:
        """A short public id of the key (hash prefix): tells two keys apart without revealing either."""
        return hashlib.sha256(b"dpagent-secrets-key-id:" + self.key).hexdigest()[:12]

    def seal(self, plain: str, aad: str) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(self.key).encrypt(nonce, plain.encode(), aad.encode())
        return f"{PREFIX}{self.kid}:{base64.b64encode(nonce + ct).decode()}"

    def open(self, sealed: str, aad: str) -> str:
        kid, _, blob = sealed[len(PREFIX):].partition(":")
        if kid != self.kid:
            raise SecretKeyError(f"{aad.replace(chr(0), ' ')}: sealed with secrets key {kid}, but this control plane "
                                 f"has key {self.kid} ({self.source}); give every replica the same key")
        try:
            raw = base64.b64decode(blob, validate=True)
            return AESGCM(self.key).decrypt(raw[:12], raw[12:], aad.encode()).decode()
        except (binascii.Error, InvalidTag, ValueError):
            raise SecretKeyError(f"{aad.replace(chr(0), ' ')}: the stored ciphertext does not verify (altered, or "
                                 "moved from another record)") from None


def parse_key(text: str, source: str) -> SecretBox:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"the secrets key from {source} must be {KEY_BYTES} random bytes in base64 "
                             "(make one with: head -c 32 /dev/urandom | base64)")
    return SecretBox(key, source)


def load_key(data_dir: str, key_file: str = "", key_b64: str = "") -> SecretBox:
    """The CP's secrets key: given inline (env/config, for replicas on several hosts), else read from `key_file`
    (default `<data dir>/secrets.key`), which is created with mode 0600 on first start."""
    if key_b64:
        return parse_key(key_b64, "DPAGENT_SECRETS_KEY")
    path = Path(key_file) if key_file else Path(data_dir) / KEY_FILE
    if not path.exists() and not key_file:
        fresh = base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process on this data dir made it first: use theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(fresh)
                f.flush()
                os.fsync(f.fileno())
    try:
        text = path.read_text()
    except OSError as e:
        raise SecretKeyError(f"cannot read the secrets key file {path}: {e.strerror}") from None
    return parse_key(text, str(path))


def _aad(kind: str, mesh: str, name: str) -> str:
    return f"{kind}\0{mesh}\0{name}"


class SealedStore:
    """A ResourceStore whose Secret/GlobalSecret `data` is sealed on the way in and opened on the way out.

    Records written before sealing existed (plain base64) are read as they are and sealed at their next write."""

    def __init__(self, inner: ResourceStore, box: SecretBox) -> None:
        self.inner = inner
        self.box = box

    @classmethod
    async def open(cls, inner: ResourceStore, box: SecretBox) -> SealedStore:
        store = cls(inner, box)
        await store.check_key()
        await store.seal_existing()
        return store

    async def seal_existing(self) -> int:
        """Seal the secrets a CP from before sealing stored in clear (its CA keys, token signing keys): an upgrade
        must not leave them readable until their next write, which for a CA key is never. Compare-and-swap on the
        version, so a replica writing the same record meanwhile wins and nothing is lost."""
        sealed = 0
        for kind in sorted(SEALED_KINDS):
            for rec in await self.inner.list(kind):
                doc = self._seal(kind, rec.mesh, rec.name, rec.doc)
                if doc is rec.doc:
                    continue
                try:
                    await self.inner.update(kind, rec.mesh, rec.name, doc, version=rec.version)
                    sealed += 1
                except (Conflict, NotFound):
                    pass
        return sealed

    async def check_key(self) -> None:
        """Record this key's id on first start; refuse to run with another one (it could read no secret and would
        write secrets no other replica can read)."""
        kind, mesh, name = KEY_CHECK
        try:
            await self.inner.create(kind, mesh, name, {"kid": self.box.kid})
            return
        except Conflict:
            pass
        rec = await self.inner.get(kind, mesh, name)
        stored = (rec.doc if rec else {}).get("kid")
        if stored and stored != self.box.kid:
            raise SecretKeyError(
                f"the store's secrets are sealed with secrets key {stored}, but this control plane has key "
                f"{self.box.kid} ({self.box.source}). Every replica on one store needs the same key: copy the key "
                "file of the first replica (store.secretsKeyFile, default <data dir>/secrets.key) or set "
                "DPAGENT_SECRETS_KEY on all of them")

    def _seal(self, kind: str, mesh: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        data = doc.get("data")
        if kind not in SEALED_KINDS or not isinstance(data, str) or data.startswith(PREFIX):
            return doc
        return {**doc, "data": self.box.seal(data, _aad(kind, mesh, name))}

    def _open(self, rec: Record) -> Record:
        data = rec.doc.get("data") if rec.kind in SEALED_KINDS else None
        if not isinstance(data, str) or not data.startswith(PREFIX):
            return rec
        doc = {**rec.doc, "data": self.box.open(data, _aad(rec.kind, rec.mesh, rec.name))}
        return dataclasses.replace(rec, doc=doc)

    async def create(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        return self._open(await self.inner.create(kind, mesh, name, self._seal(kind, mesh, name, doc), audit=audit))

    async def update(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     version: int | None = None, audit: AuditEntry | None = None) -> Record:
        return self._open(await self.inner.update(kind, mesh, name, self._seal(kind, mesh, name, doc),
                                                  version=version, audit=audit))

    async def upsert(self, kind: str, mesh: str, name: str, doc: dict[str, Any], *,
                     audit: AuditEntry | None = None) -> Record:
        return self._open(await self.inner.upsert(kind, mesh, name, self._seal(kind, mesh, name, doc), audit=audit))

    async def get(self, kind: str, mesh: str, name: str) -> Record | None:
        rec = await self.inner.get(kind, mesh, name)
        return None if rec is None else self._open(rec)

    async def list(self, kind: str, *, mesh: str | None = None, offset: int = 0,
                   limit: int | None = None) -> list[Record]:
        recs = await self.inner.list(kind, mesh=mesh, offset=offset, limit=limit)
        return [self._open(r) for r in recs] if kind in SEALED_KINDS else recs

    async def count(self, kind: str, mesh: str | None = None) -> int:
        return await self.inner.count(kind, mesh)

    async def delete(self, kind: str, mesh: str, name: str, *, version: int | None = None,
                     audit: AuditEntry | None = None) -> Record:
        return self._open(await self.inner.delete(kind, mesh, name, version=version, audit=audit))

    async def delete_mesh_scoped(self, mesh: str) -> int:
        return await self.inner.delete_mesh_scoped(mesh)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def subscribe(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        return await self.inner.subscribe(max_pending=max_pending)

    async def append_audit(self, entry: AuditEntry) -> None:
        await self.inner.append_audit(entry)

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return await self.inner.audit_entries(query)

    async def sweep_audit(self, *, keep: int | None = None, older_than: float | None = None) -> int:
        return await self.inner.sweep_audit(keep=keep, older_than=older_than)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> SealedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
