"""User tokens for the REST API (Kuma's `generate user-token`): RS256 JWTs naming a user and their groups.

They are signed by their own key set, global rather than per mesh (Kuma's `user-token-signing-key-<serial>`
GlobalSecrets), and revoked through the GlobalSecret `user-token-revocations` (comma-separated `jti`s), so a
dataplane token can never pass as a user token or the other way round: the keys differ, and so does the audience.
Rotation and revocation work as for dataplane tokens: new tokens use the highest serial, old ones verify until
their key is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import jwt

from dpagent.controlplane.secrets import retry_on_conflict
from dpagent.controlplane.store import AuditEntry, ResourceStore
from dpagent.controlplane.tokens import (
    _SIGNATURE_ONLY,
    ALGORITHM,
    NBF_SKEW,
    SigningKey,
    TokenError,
    _load_private,
    generate_signing_key,
)
from dpagent.errors import ConfigError, NotFound
from dpagent.timefmt import human_time

GLOBAL_SECRET = "GlobalSecret"
KEY_PREFIX = "user-token-signing-key-"
REVOCATIONS = "user-token-revocations"
AUDIENCE = "dpagent-api"  # dataplane tokens carry none: a dataplane token is never a user token
ADMIN_GROUP = "mesh-system:admin"
AUTHENTICATED = "mesh-system:authenticated"
UNAUTHENTICATED = "mesh-system:unauthenticated"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user token's name and groups, the admin, or an anonymous caller."""

    name: str
    groups: tuple[str, ...]
    source: str = ""
    jti: str = ""

    @property
    def anonymous(self) -> bool:
        return UNAUTHENTICATED in self.groups

    def audit(self, access: str, kind: str, mesh: str, name: str, outcome: str, detail: str = "",
              digests: bool = True) -> AuditEntry:
        return AuditEntry(who=self.name, groups=self.groups, source=self.source, access=access, kind=kind,
                          mesh=mesh, name=name, outcome=outcome, detail=detail, digests=digests)


def admin(source: str = "", name: str = "admin") -> Principal:
    return Principal(name, (ADMIN_GROUP, AUTHENTICATED), source)


def anonymous(source: str = "") -> Principal:
    return Principal("mesh-system:anonymous", (UNAUTHENTICATED,), source)


def _doc(name: str, data: str) -> dict[str, Any]:
    return {"type": GLOBAL_SECRET, "name": name, "data": base64.b64encode(data.encode()).decode()}


def _data(doc: dict[str, Any]) -> str:
    return base64.b64decode(doc.get("data", "")).decode()


async def signing_keys(store: ResourceStore) -> list[SigningKey]:
    out = []
    for rec in await store.list(GLOBAL_SECRET, mesh=""):
        serial = rec.name[len(KEY_PREFIX):]
        if rec.name.startswith(KEY_PREFIX) and serial.isdigit():
            out.append(SigningKey(mesh="", serial=int(serial), private_pem=_data(rec.doc)))
    return sorted(out, key=lambda k: k.serial)


async def ensure_signing_key(store: ResourceStore) -> SigningKey:
    """The newest key, creating key 1 on first use; racing callers (replicas) end up with the same key 1."""
    keys = await signing_keys(store)
    if keys:
        return keys[-1]
    key = await asyncio.to_thread(generate_signing_key, "", 1)
    name = f"{KEY_PREFIX}1"
    from dpagent.errors import Conflict

    try:
        await store.create(GLOBAL_SECRET, "", name, _doc(name, key.private_pem))
    except Conflict:
        return (await signing_keys(store))[-1]
    return key


async def rotate_signing_key(store: ResourceStore, audit: AuditEntry | None = None) -> SigningKey:
    pem = (await asyncio.to_thread(generate_signing_key, "", 0)).private_pem

    async def step() -> SigningKey:
        keys = await signing_keys(store)
        serial = (keys[-1].serial + 1) if keys else 1
        name = f"{KEY_PREFIX}{serial}"
        await store.create(GLOBAL_SECRET, "", name, _doc(name, pem), audit=audit)
        return SigningKey(mesh="", serial=serial, private_pem=pem)

    return await retry_on_conflict(step, "rotating the user-token signing key")


async def delete_signing_key(store: ResourceStore, serial: int, audit: AuditEntry | None = None) -> None:
    keys = await signing_keys(store)
    if not any(k.serial == serial for k in keys):
        raise NotFound(f"there is no user-token signing key {serial} (there are: "
                       f"{', '.join(str(k.serial) for k in keys) or 'none'})")
    if serial == keys[-1].serial:
        raise ConfigError(f"user-token signing key {serial} is the newest; rotate first, then delete the old one")
    await store.delete(GLOBAL_SECRET, "", f"{KEY_PREFIX}{serial}", audit=audit)


def _revoked_in(doc: dict[str, Any] | None) -> frozenset[str]:
    return frozenset() if doc is None else frozenset(j for j in _data(doc).split(",") if j)


async def revoked(store: ResourceStore) -> frozenset[str]:
    rec = await store.get(GLOBAL_SECRET, "", REVOCATIONS)
    return _revoked_in(rec.doc if rec else None)


async def revoke(store: ResourceStore, jti: str, audit: AuditEntry | None = None) -> None:
    """Compare-and-swap on the list's version, as for dataplane tokens: two revocations at once both land."""

    async def step() -> None:
        rec = await store.get(GLOBAL_SECRET, "", REVOCATIONS)
        current = _revoked_in(rec.doc if rec else None)
        if jti in current:
            return
        doc = _doc(REVOCATIONS, ",".join(sorted(current | {jti})))
        if rec is None:
            await store.create(GLOBAL_SECRET, "", REVOCATIONS, doc, audit=audit)
        else:
            await store.update(GLOBAL_SECRET, "", REVOCATIONS, doc, version=rec.version, audit=audit)

    await retry_on_conflict(step, f"revoking user token {jti}")


def issue(key: SigningKey, *, name: str, groups: list[str], valid_for: float, now: float | None = None) -> str:
    if valid_for <= 0:
        raise ValueError("valid_for must be positive (seconds)")
    t = time.time() if now is None else now
    claims = {"Name": name, "Groups": list(groups), "aud": AUDIENCE, "jti": str(uuid.uuid4()), "iat": int(t),
              "nbf": int(t - NBF_SKEW), "exp": int(t + valid_for)}
    return jwt.encode(claims, _load_private(key.private_pem), algorithm=ALGORITHM, headers={"kid": key.kid})


def _hint(name: str = "<name>") -> str:
    return f"ask an admin for a new one: `dpagent token generate-user --name {name} --group <group> --valid-for 24h`"


def verify(token: str, keys: list[SigningKey], revoked_ids: Container[str], now: float | None = None
           ) -> tuple[str, tuple[str, ...], str]:
    """(name, groups, jti) of a valid user token; TokenError saying exactly why not otherwise."""
    segments = token.split(".")
    if len(segments) != 3 or not all(segments[:2]):
        raise TokenError("malformed", "the bearer token is neither the admin token nor a user token (a JWT has "
                                      "three dot-separated parts); " + _hint())
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed", "the user token is not valid base64url JSON; " + _hint()) from None
    if header.get("alg") != ALGORITHM:
        raise TokenError("algorithm", f"the user token is signed with {str(header.get('alg'))[:32]!r}; only "
                                      f"{ALGORITHM} user tokens are accepted")
    try:
        peek = jwt.decode(token, options={"verify_signature": False})  # only to explain a refusal
    except jwt.PyJWTError:
        peek = {}
    if isinstance(peek, dict) and "Mesh" in peek and "aud" not in peek:
        raise TokenError("audience", "this is a dataplane token, not a user token: dataplane tokens cannot call "
                                     "the API; " + _hint())
    kid = str(header.get("kid", ""))[:64]
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        known = ", ".join(k.kid for k in keys) or "none"
        raise TokenError("unknown-kid", f"there is no user-token signing key with KID {kid or '(none)'} (known: "
                                        f"{known}); if the key was rotated and deleted, " + _hint())
    try:
        payload = jwt.decode(token, _load_private(key.private_pem).public_key(), algorithms=[ALGORITHM],
                             options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError:
        raise TokenError("signature", "the user token's signature does not match: it was altered or issued by "
                                      "another control plane; " + _hint()) from None
    except jwt.PyJWTError:
        raise TokenError("malformed", "the user token's payload cannot be decoded; " + _hint()) from None
    name, groups, jti, exp = payload.get("Name"), payload.get("Groups") or [], payload.get("jti"), payload.get("exp")
    if payload.get("aud") != AUDIENCE:
        raise TokenError("audience", "this is not a user token (a dataplane token cannot call the API); " + _hint())
    if not isinstance(name, str) or not name or not isinstance(groups, list) or not all(
            isinstance(g, str) for g in groups) or not isinstance(jti, str) or not isinstance(exp, int | float):
        raise TokenError("malformed", "the user token lacks Name, Groups, jti or exp; " + _hint())
    t = time.time() if now is None else now
    if t >= exp:
        raise TokenError("expired", f"the user token of {name} expired at {human_time(exp, now=t)}; " + _hint(name))
    nbf = payload.get("nbf", 0)
    if isinstance(nbf, int | float) and t < nbf:
        raise TokenError("not-yet-valid", f"the user token is not valid until {human_time(nbf, now=t)} by this "
                                          "control plane's clock; sync the clocks with NTP")
    if jti in revoked_ids:
        raise TokenError("revoked", f"the user token {jti} of {name} has been revoked; " + _hint(name))
    return name, (*groups, AUTHENTICATED), jti


class UserTokens:
    """Verifies user tokens against the store's keys and revocations, read at most once per `ttl`: a revoked
    token stops working within that time on every replica."""

    def __init__(self, store: ResourceStore, ttl: float = 1.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cached: tuple[float, list[SigningKey], frozenset[str]] | None = None

    def forget(self) -> None:
        """After this replica rotated, deleted or revoked: the next check reads the store again."""
        self._cached = None

    async def principal(self, token: str, source: str) -> Principal:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.ttl:
            self._cached = (now, await signing_keys(self.store), await revoked(self.store))
        _, keys, gone = self._cached
        name, groups, jti = verify(token, keys, gone)
        return Principal(name, groups, source, jti)
