"""Dataplane tokens in Kuma's wire format (RS256 JWT, `kid` = signing-key serial, capitalised claim names).

Keeping Kuma's format means tokens made by `kumactl` or any JWT tool with an exported key work here, and the other
way round. Verification runs on every bootstrap, certificate request and ADS stream, so public keys are parsed once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dpagent.errors import ControlPlaneRejected
from dpagent.model.dataplane import SERVICE_TAG
from dpagent.timefmt import human_time

ALGORITHM = "RS256"
NBF_SKEW = 5.0  # seconds nbf is back-dated, so a CP slightly ahead of the CP clock that issued does not reject


# Time claims are checked by hand: the clock must be injectable and each failure needs its own message.
_SIGNATURE_ONLY: Any = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                        "verify_iss": False, "verify_sub": False, "verify_jti": False}


class TokenError(ControlPlaneRejected):
    """The token cannot be accepted; `reason` is a short machine key, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class SigningKey:
    """One per-mesh RSA signing key; new tokens use the highest serial, older serials still verify until deleted."""

    mesh: str
    serial: int
    private_pem: str

    def __repr__(self) -> str:  # the PEM is a secret: keep it out of logs and tracebacks
        return f"SigningKey(mesh={self.mesh!r}, serial={self.serial})"

    @property
    def kid(self) -> str:
        return str(self.serial)

    def public_pem(self) -> str:
        """For offline verification setups (Kuma's `generate public-key`)."""
        return _load_private(self.private_pem).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class DataplaneClaims:
    name: str
    mesh: str
    tags: dict[str, list[str]]
    type: str
    jti: str
    iat: float
    nbf: float
    exp: float


def generate_signing_key(mesh: str, serial: int) -> SigningKey:
    """RSA-2048 because that is what Kuma uses, so keys and tokens stay interchangeable."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return SigningKey(mesh=mesh, serial=serial, private_pem=pem)


@lru_cache(maxsize=64)
def _load_private(pem: str) -> rsa.RSAPrivateKey:
    """Loading an RSA key runs its consistency checks (~ms); issuing many tokens should pay that once."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("a dataplane-token signing key must be RSA (tokens are RS256)")
    return key


def issue_token(key: SigningKey, *, name: str, mesh: str, tags: Mapping[str, list[str]] | None, valid_for: float,
                now: float | None = None, proxy_type: str = "dataplane") -> str:
    """Sign a token bound to `name`/`mesh`/`tags`; an empty name or tag map makes the token usable by any of them."""
    if mesh != key.mesh:
        raise ValueError(f"signing key belongs to mesh {key.mesh!r}, cannot issue a token for mesh {mesh!r}")
    if valid_for <= 0:
        raise ValueError("valid_for must be positive (seconds)")
    t = time.time() if now is None else now
    claims = {
        "Name": name,
        "Mesh": mesh,
        "Tags": {k: list(v) for k, v in sorted((tags or {}).items())},
        "Type": proxy_type,
        "jti": str(uuid.uuid4()),
        "iat": int(t),
        "nbf": int(t - NBF_SKEW),
        "exp": int(t + valid_for),
    }
    return jwt.encode(claims, _load_private(key.private_pem), algorithm=ALGORITHM, headers={"kid": key.kid})


def generate_command(name: str, mesh: str, tags: Mapping[str, Iterable[str]] | None = None) -> str:
    """The exact command an operator runs to replace a bad token; quoted in every message that needs it."""
    parts = ["dpagent token generate"]
    if name:
        parts.append(f"--name {name}")
    parts.append(f"--mesh {mesh or 'default'}")
    bound = dict(tags or {})
    # A token bound only by name lets its holder claim any service's identity, so the suggested command always
    # binds the service too; a placeholder is better than teaching operators the unsafe form.
    bound.setdefault(SERVICE_TAG, ["<service>"])
    parts += [f"--tag {k}={','.join(v)}" for k, v in sorted(bound.items())]
    parts.append("--valid-for 720h")
    return " ".join(parts)


def _malformed(detail: str) -> TokenError:
    return TokenError("malformed", f"{detail} — the token file is empty or truncated, or is not a dataplane token; "
                                   "regenerate it with `dpagent token generate --name <dataplane> --mesh <mesh> "
                                   "--valid-for 720h`")


class TokenVerifier:
    """Verifies tokens against the signing keys it was given; rebuild or `set_keys` after a key rotation."""

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        self._keys: dict[tuple[str, str], rsa.RSAPublicKey] = {}
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[SigningKey]) -> None:
        """Replace the key set; unchanged PEMs are served from the private-key cache, so this stays cheap."""
        loaded = {(k.mesh, k.kid): _load_private(k.private_pem).public_key() for k in keys}
        self._keys = loaded

    def add_public_key(self, mesh: str, kid: str, public_pem: str) -> None:
        """Offline issuing: the CP holds only the public half (Kuma's `validator.publicKeys`)."""
        key = serialization.load_pem_public_key(public_pem.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("a dataplane-token public key must be RSA (tokens are RS256)")
        self._keys = {**self._keys, (mesh, str(kid)): key}

    def kids(self, mesh: str) -> list[str]:
        return sorted((k for m, k in self._keys if m == mesh), key=lambda s: (len(s), s))

    def verify(self, token: str | bytes, *, mesh_hint: str | None, revoked: Container[str] = (),
               now: float | None = None) -> DataplaneClaims:
        """Check signature, time window and revocation. `mesh_hint` is the mesh of the Dataplane presenting it."""
        if isinstance(token, bytes):
            token = token.decode("ascii", errors="replace")
        token = token.strip() if isinstance(token, str) else ""
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        segments = token.split(".")
        if len(segments) != 3 or not segments[0] or not segments[1]:
            raise _malformed("token contains an invalid number of segments")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _malformed("token is not valid base64url-encoded JSON") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise TokenError("algorithm", f"token is signed with {str(alg)[:32]!r} but only {ALGORITHM} dataplane "
                                          "tokens are accepted; regenerate it with `dpagent token generate ...`")
        kid = header.get("kid")
        if kid is None or str(kid) == "":
            raise TokenError("kid", "token has no `kid` header, so no signing key can be chosen; it was not issued by "
                                    "this control plane — regenerate it with `dpagent token generate ...`")
        kid = str(kid)[:64]
        claimed_mesh = None if mesh_hint else self._peek(token).get("Mesh")
        mesh = mesh_hint or claimed_mesh
        if not mesh or not isinstance(mesh, str):
            raise TokenError("mesh", "token names no mesh and the dataplane's mesh is unknown; generate a token with "
                                     "`dpagent token generate --mesh <mesh> ...`")
        public_key = self._keys.get((mesh, kid))
        if public_key is None:
            self._raise_if_wrong_mesh(token, mesh)
            known = ", ".join(self.kids(mesh)) or "none"
            raise TokenError("unknown-kid", f"there is no signing key with KID {kid} for mesh {mesh} (known KIDs: "
                                            f"{known}); if the signing key was rotated, regenerate the token")
        sig = segments[2]
        sig_len = len(sig) * 3 // 4 if len(sig) % 4 != 1 else -1
        if sig_len != public_key.key_size // 8:
            raise _malformed("token signature has the wrong length (the token was cut short or padded)")
        try:
            payload = jwt.decode(token, public_key, algorithms=[ALGORITHM], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            self._raise_if_wrong_mesh(token, mesh)
            raise TokenError("signature", f"token signature does not match signing key {kid} of mesh {mesh}: the "
                                          "token was altered, or was issued by another control plane; regenerate it "
                                          "with `dpagent token generate ...` on this control plane") from None
        except jwt.PyJWTError:
            raise _malformed("token payload cannot be decoded") from None
        claims = _claims(payload)
        if claims.mesh and claims.mesh != mesh:
            raise self._wrong_mesh(claims.mesh, mesh, claims)
        t = time.time() if now is None else now
        if t >= claims.exp:
            cmd = generate_command(claims.name, mesh, claims.tags)
            raise TokenError("expired", f"token expired at {human_time(claims.exp, now=t)}; "
                                        f"generate a new one with `{cmd}` and replace the token file")
        if t < claims.nbf:
            raise TokenError("not-yet-valid", f"token is not valid until {human_time(claims.nbf, now=t)} by this "
                                              "control plane's clock; the clocks of the control "
                                              "plane and the host that issued it disagree — sync them with NTP")
        if claims.jti in revoked:
            cmd = generate_command(claims.name, mesh, claims.tags)
            raise TokenError("revoked", f"token {claims.jti} has been revoked; generate a new one with `{cmd}`")
        return claims

    @staticmethod
    def _peek(token: str) -> dict[str, Any]:
        """Unverified claims, used only to pick a key or to explain a failure — never to grant anything."""
        try:
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _malformed("token payload is not valid base64url JSON") from None
        return payload if isinstance(payload, dict) else {}

    def _raise_if_wrong_mesh(self, token: str, mesh: str) -> None:
        claimed = self._peek(token).get("Mesh")
        if isinstance(claimed, str) and claimed and claimed != mesh:
            raise self._wrong_mesh(claimed, mesh, None)

    @staticmethod
    def _wrong_mesh(claimed: str, mesh: str, claims: DataplaneClaims | None) -> TokenError:
        name = claims.name if claims else "<dataplane>"
        return TokenError("mesh", f"token was issued for mesh {claimed} but the dataplane is in mesh {mesh}; "
                                  f"generate one for this mesh with `{generate_command(name, mesh)}`")


def _claims(payload: Mapping[str, Any]) -> DataplaneClaims:
    """Type-check claims: a signed token with odd types is still a bug somewhere, and must fail loudly."""
    tags = payload.get("Tags") or {}
    if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v) for k, v in tags.items()):
        raise _malformed("token claim Tags is not a map of string lists")
    for field in ("Name", "Mesh", "Type"):
        if not isinstance(payload.get(field, ""), str):
            raise _malformed(f"token claim {field} is not a string")
    jti = payload.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _malformed("token has no jti claim, so it could never be revoked")
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _malformed("token has no exp claim (tokens must expire)")
    nums = {}
    for field in ("iat", "nbf"):
        value = payload.get(field, 0)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _malformed(f"token claim {field} is not a number")
        nums[field] = float(value)
    return DataplaneClaims(name=payload.get("Name") or "", mesh=payload.get("Mesh") or "",
                           tags={k: list(v) for k, v in tags.items()}, type=payload.get("Type") or "", jti=jti,
                           iat=nums["iat"], nbf=nums["nbf"], exp=float(exp))


def check_dataplane_matches(claims: DataplaneClaims, *, name: str, mesh: str, tags: Mapping[str, set[str]]) -> None:
    """Kuma's binding rules: set Name/Mesh must match; each token tag must exist and cover EVERY dataplane value.

    Covering every value matters: a dataplane with `service: [web, admin]` must not pass with a token for `web`.
    """
    cmd = generate_command(name, mesh, {k: sorted(v) for k, v in tags.items()})
    if claims.name and claims.name != name:
        raise TokenError("name", f"token is for dataplane {claims.name!r} but this dataplane is named {name!r}; "
                                 f"use that dataplane's token, or generate one with `{cmd}`")
    if claims.mesh and claims.mesh != mesh:
        raise TokenError("mesh", f"token is for mesh {claims.mesh!r} but this dataplane is in mesh {mesh!r}; "
                                 f"generate one with `{cmd}`")
    for key in sorted(claims.tags):
        allowed = claims.tags[key]
        values = tags.get(key)
        if not values:
            raise TokenError("tags", f"token requires tag {key} (allowed: {', '.join(allowed) or 'none'}) but the "
                                     f"dataplane has no such tag; add it to the Dataplane or generate a token with "
                                     f"`{cmd}`")
        extra = sorted(set(values) - set(allowed))
        if extra:
            # No ready-made command here: the Dataplane is the untrusted side, and a command built from its tags
            # would approve exactly the impersonation this check has just stopped.
            raise TokenError("tags", f"dataplane tag {key} has value(s) {', '.join(extra)} that the token does not "
                                     f"allow (token allows {key}: {', '.join(allowed) or 'none'}); correct the "
                                     f"Dataplane's {key} tag, or, only if this host really runs "
                                     f"{', '.join(extra)}, have an operator issue it a token that lists them")
