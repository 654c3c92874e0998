"""Dataplane auth right after `token signing-key rotate`: the key cache must not refuse tokens of the new key."""

import time

import pytest

from dpagent.controlplane import secrets
from dpagent.controlplane.auth import DataplaneAuth
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


async def test_unknown_key_ids_do_not_reread_the_store_each_time(store):
    auth = DataplaneAuth(store)
    dp = parse_dataplane(DP)
    k1 = await secrets.ensure_signing_key(store, "default")
    await auth.verify(issue_token(k1, name="web-1", mesh="default", tags=None, valid_for=3600), dp)
    forged = issue_token(generate_signing_key("default", 99), name="web-1", mesh="default", tags=None,
                         valid_for=3600)
    reads = 0
    real = store.list

    async def counting(*a, **kw):
        nonlocal reads
        reads += 1
        return await real(*a, **kw)

    store.list = counting
    for _ in range(50):
        with pytest.raises(TokenError, match="no signing key with KID 99"):
            await auth.verify(forged, dp)
    assert reads <= 4, f"{reads} store reads for 50 tokens naming an unknown key"

