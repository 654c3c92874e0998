"""Dataplane auth right after `token signing-key rotate`: the key cache must not refuse tokens of the new key."""

import asyncio
import time
from typing import Any

import pytest

from dpagent.controlplane import secrets
from dpagent.controlplane.auth import REFRESH_GAP, DataplaneAuth
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.tokens import TokenError, generate_signing_key, issue_token
from dpagent.model.dataplane import parse_dataplane

MESH = {"type": "Mesh", "name": "default"}
DP = {"type": "Dataplane", "mesh": "default", "name": "web-1",
      "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}


@pytest.fixture
async def store():
    s = await MemoryStore.open()
    await Resources(s).apply(dict(MESH))
    yield s
    await s.close()


async def test_token_of_a_just_rotated_key_is_accepted_at_once(store):
    auth = DataplaneAuth(store)  # the CP's default: key sets cached for 1 s
    dp = parse_dataplane(DP)
    k1 = await secrets.ensure_signing_key(store, "default")
    await auth.verify(issue_token(k1, name="web-1", mesh="default", tags=None, valid_for=3600), dp)  # fills cache
    k2 = await secrets.rotate_signing_key(store, "default")
    fresh = issue_token(k2, name="web-1", mesh="default", tags=None, valid_for=3600)
    t0 = time.monotonic()
    assert (await auth.verify(fresh, dp)).name == "web-1"
    assert time.monotonic() - t0 < 0.5


async def forged_setup(store: MemoryStore) -> tuple[DataplaneAuth, Any, str, list[int]]:
    """An auth with the mesh's keys cached, a token signed by a key the mesh never had, and a live count of the
    store reads made from now on."""
    auth = DataplaneAuth(store)
    dp = parse_dataplane(DP)
    k1 = await secrets.ensure_signing_key(store, "default")
    await auth.verify(issue_token(k1, name="web-1", mesh="default", tags=None, valid_for=3600), dp)
    forged = issue_token(generate_signing_key("default", 99), name="web-1", mesh="default", tags=None,
                         valid_for=3600)
    reads = [0]
    real = store.list

    async def counting(*a: Any, **kw: Any) -> Any:
        reads[0] += 1
        return await real(*a, **kw)

    store.list = counting  # type: ignore[method-assign]
    return auth, dp, forged, reads


async def test_unknown_key_ids_do_not_reread_the_store_each_time(store):
    auth, dp, forged, reads = await forged_setup(store)
    t0 = time.monotonic()
    for _ in range(50):
        with pytest.raises(TokenError, match="no signing key with KID 99"):
            await auth.verify(forged, dp)
    elapsed = time.monotonic() - t0
    # each read lists keys and revocations: two calls per read, at most one read per REFRESH_GAP
    assert reads[0] <= 2 * (elapsed / REFRESH_GAP + 2), f"{reads[0]} store reads in {elapsed:.2f} s"


async def test_concurrent_unknown_key_ids_share_one_read(store):
    auth, dp, forged, reads = await forged_setup(store)
    results = await asyncio.gather(*(auth.verify(forged, dp) for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    assert reads[0] <= 4, f"{reads[0]} store reads for 200 concurrent tokens naming an unknown key"


async def test_key_created_just_after_a_refresh_is_not_refused(store):
    """The race the refresh gap used to lose: a made-up key id triggers a re-read, a real rotation lands a few ms
    later, and a token of the new key must still be accepted, not refused until the gap or the cache expires.
    The clock moves a microsecond per reading, so everything here happens well inside one REFRESH_GAP."""
    ticks = iter(range(10**9))
    auth = DataplaneAuth(store, clock=lambda: next(ticks) * 1e-6)
    dp = parse_dataplane(DP)
    k1 = await secrets.ensure_signing_key(store, "default")
    await auth.verify(issue_token(k1, name="web-1", mesh="default", tags=None, valid_for=3600), dp)
    forged = issue_token(generate_signing_key("default", 99), name="web-1", mesh="default", tags=None,
                         valid_for=3600)
    with pytest.raises(TokenError):
        await auth.verify(forged, dp)  # re-reads the keys now
    k2 = await secrets.rotate_signing_key(store, "default")  # well inside REFRESH_GAP of that read
    fresh = issue_token(k2, name="web-1", mesh="default", tags=None, valid_for=3600)
    assert (await auth.verify(fresh, dp)).name == "web-1"

