"""Dataplane authentication, shared by /bootstrap, /certificates and every ADS stream.

Kuma checks the token only on the ADS stream and only once per stream; dpagent checks it at every entry point
and re-checks live streams, so an expired or revoked token is cut off within seconds (Kuma #3379).
Signing keys and revocations are read from the store at most once per `ttl` per mesh.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dpagent.controlplane import secrets
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.tokens import DataplaneClaims, TokenError, TokenVerifier, check_dataplane_matches
from dpagent.model.dataplane import Dataplane


class DataplaneAuth:
    def __init__(self, store: ResourceStore, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, TokenVerifier, frozenset[str]]] = {}

    async def _verifier(self, mesh: str) -> tuple[TokenVerifier, frozenset[str]]:
        hit = self._cache.get(mesh)
        if hit and self.clock() - hit[0] < self.ttl:
            return hit[1], hit[2]
        verifier = TokenVerifier(await secrets.signing_keys(self.store, mesh))
        revoked = await secrets.revoked(self.store, mesh)
        self._cache[mesh] = (self.clock(), verifier, revoked)
        return verifier, revoked

    async def verify(self, token: str, dp: Dataplane) -> DataplaneClaims:
        """Token valid, not revoked, and bound to this dataplane's name, mesh and tags; else TokenError."""
        if not token or not token.strip():
            raise TokenError("malformed", "a dataplane token is required; generate one with `dpagent token generate "
                                          f"--name {dp.name} --mesh {dp.mesh} --valid-for 720h`")
        verifier, revoked = await self._verifier(dp.mesh)
        claims = verifier.verify(token, mesh_hint=dp.mesh, revoked=revoked)
        check_dataplane_matches(claims, name=dp.name, mesh=dp.mesh, tags=dp.all_tags())
        return claims

    async def still_valid(self, token: str, dp: Dataplane) -> None:
        """For live streams: re-verify (expiry, revocation) using the cached keys."""
        await self.verify(token, dp)
