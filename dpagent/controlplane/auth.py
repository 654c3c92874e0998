"""Dataplane authentication, shared by /bootstrap, /certificates and every ADS stream.

Kuma checks the token only on the ADS stream and only once per stream; dpagent checks it at every entry point
and re-checks live streams, so an expired or revoked token is cut off within seconds (Kuma #3379).
Signing keys and revocations are read from the store at most once per `ttl` per mesh. A token whose signature
already verified against the same key set is not re-verified: every live stream is re-checked every few seconds,
and at 1,000 proxies that RSA + JWT work was most of an idle CP's CPU. Time window and revocation are checked on
every call, and any doubt falls back to the full verification so refusals keep their exact messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dpagent.controlplane import secrets
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.tokens import (
    DataplaneClaims,
    TokenError,
    TokenVerifier,
    check_dataplane_matches,
    generate_command,
)
from dpagent.model.dataplane import Dataplane

# A token naming an unknown key makes the keys be read again at once, but not more often than this per mesh:
# a flood of tokens with made-up key ids must not turn into a flood of store reads.
REFRESH_GAP = 0.05
MAX_VERIFIED = 100_000  # tokens remembered as verified (~1 KB each), well above any zone's proxy count


class DataplaneAuth:
    def __init__(self, store: ResourceStore, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        # mesh -> (when the read of its keys started, verifier, revoked token ids)
        self._cache: dict[str, tuple[float, TokenVerifier, frozenset[str]]] = {}
        self._refresh = asyncio.Lock()  # one unknown-key re-read at a time; waiters share its result
        self._keysets: dict[str, tuple[tuple[tuple[int, str], ...], TokenVerifier]] = {}
        # (mesh, token) -> (verifier it verified against, claims); a verifier object is kept while its keys stay
        self._verified: dict[tuple[str, str], tuple[TokenVerifier, DataplaneClaims]] = {}

    async def _verifier(self, mesh: str) -> tuple[TokenVerifier, frozenset[str]]:
        hit = self._cache.get(mesh)
        if hit and self.clock() - hit[0] < self.ttl:
            return hit[1], hit[2]
        started = self.clock()
        keys = await secrets.signing_keys(self.store, mesh)
        if not keys:  # a mesh named by an unauthenticated caller: nothing to cache, or made-up names fill memory
            return TokenVerifier(()), frozenset()
        keyset = tuple((k.serial, k.private_pem) for k in keys)
        known = self._keysets.get(mesh)
        if known is not None and known[0] == keyset:
            verifier = known[1]  # same keys: keep the object, so tokens it verified stay verified
        else:
            verifier = TokenVerifier(keys)
            self._keysets[mesh] = (keyset, verifier)
            self._verified = {k: v for k, v in self._verified.items() if k[0] != mesh}
        revoked = await secrets.revoked(self.store, mesh)
        self._cache[mesh] = (started, verifier, revoked)
        return verifier, revoked

    async def _keys_read_after(self, mesh: str, since: float) -> tuple[TokenVerifier, frozenset[str]]:
        """A key set read after `since`. A token signed by a key created a moment ago must not be refused because
        the last read happened just before the key was written; waiting out REFRESH_GAP keeps made-up key ids
        from costing more than one store read per gap, and every waiter shares the read that follows."""
        async with self._refresh:
            hit = self._cache.get(mesh)
            if hit is not None and hit[0] >= since:
                return hit[1], hit[2]
            if hit is not None:
                wait = REFRESH_GAP - (self.clock() - hit[0])
                if wait > 0:
                    await asyncio.sleep(wait)
            self._cache.pop(mesh, None)
            return await self._verifier(mesh)

    def _check(self, verifier: TokenVerifier, token: str, mesh: str, revoked: frozenset[str]) -> DataplaneClaims:
        """`verifier.verify`, skipping the signature when this token already verified against the same keys."""
        hit = self._verified.get((mesh, token))
        if hit is not None and hit[0] is verifier:
            claims = hit[1]
            if claims.nbf <= time.time() < claims.exp and claims.jti not in revoked:
                return claims
        claims = verifier.verify(token, mesh_hint=mesh, revoked=revoked)
        if len(self._verified) >= MAX_VERIFIED:
            del self._verified[next(iter(self._verified))]  # oldest first; a bound, not an eviction policy
        self._verified[(mesh, token)] = (verifier, claims)
        return claims

    async def verify(self, token: str, dp: Dataplane) -> DataplaneClaims:
        """Token valid, not revoked, and bound to this dataplane's name, mesh and tags; else TokenError."""
        if not token or not token.strip():
            raise TokenError("malformed", "a dataplane token is required; generate one with "
                                          f"`{generate_command(dp.name, dp.mesh)}`")
        claims = await self._claims(token, dp.mesh)
        check_dataplane_matches(claims, name=dp.name, mesh=dp.mesh, tags=dp.all_tags())
        return claims

    async def authenticate(self, token: str, mesh: str) -> DataplaneClaims:
        """Signature, time window and revocation of a token presented for `mesh`, before any Dataplane is looked up:
        an unauthenticated caller must not learn which dataplanes exist."""
        if not token or not token.strip():
            raise TokenError("malformed", "a dataplane token is required; generate one with "
                                          f"`{generate_command('', mesh)}`")
        return await self._claims(token, mesh)

    async def _claims(self, token: str, mesh: str) -> DataplaneClaims:
        arrived = self.clock()
        verifier, revoked = await self._verifier(mesh)
        try:
            return self._check(verifier, token, mesh, revoked)
        except TokenError as e:
            if e.reason != "unknown-kid":
                raise
            hit = self._cache.get(mesh)
            if hit is None or hit[0] >= arrived:
                raise  # the keys were read after this token arrived (or the mesh has none): that key does not exist
        # Signed by a key newer than the cached key set (`token signing-key rotate` a moment ago): read the keys
        # again now instead of refusing a valid token until the cache expires.
        verifier, revoked = await self._keys_read_after(mesh, arrived)
        return self._check(verifier, token, mesh, revoked)

    async def still_valid(self, token: str, dp: Dataplane) -> None:
        """For live streams: re-verify (expiry, revocation) using the cached keys."""
        await self.verify(token, dp)
