"""State that several writers share (two CP replicas on one PostgreSQL, or concurrent requests on one CP) is
written with create-if-absent or compare-and-swap: no second signing key or CA, no lost revocation, no VIP that
another replica's allocation silently overwrote."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pgserver import PgServer, open_pg_store, store_config

from dpagent.controlplane import secrets
from dpagent.controlplane.ca import CertificateAuthority
from dpagent.controlplane.store import ResourceStore, SqliteStore
from dpagent.controlplane.store.postgres import PostgresStore
from dpagent.controlplane.xds import vips as vip
from dpagent.controlplane.xds.sync import XdsSync

MESHES = ("default", "payments")
CALLERS = 6  # per mesh; each makes its own RSA key before learning whether it won, so keep this small


@pytest.fixture(params=["postgres", "sqlite"])
async def writers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[ResourceStore]]:
    """Two stores on one PostgreSQL database (two replicas), or one SQLite store shared by concurrent tasks."""
    if request.param == "sqlite":
        store = await SqliteStore.open(tmp_path / "store.db")
        yield [store, store]
        await store.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    database = await server.create_database()
    a = await open_pg_store(server, database)
    b = await PostgresStore.open(store_config(server, database))
    yield [a, b]
    await a.close()
    await b.close()
    await server.drop_database(database)


async def test_racing_writers_make_one_signing_key_and_one_ca_per_mesh(writers: list[ResourceStore]) -> None:
    keys = await asyncio.gather(*(secrets.ensure_signing_key(writers[i % 2], mesh)
                                  for mesh in MESHES for i in range(CALLERS)))
    cas = await asyncio.gather(*(secrets.builtin_ca(writers[i % 2], mesh, "ca-1")
                                 for mesh in MESHES for i in range(CALLERS)))
    for n, mesh in enumerate(MESHES):
        mine = keys[n * CALLERS:(n + 1) * CALLERS]
        assert {k.private_pem for k in mine} == {mine[0].private_pem}, "callers were handed different keys"
        stored = await secrets.signing_keys(writers[1], mesh)
        assert [k.serial for k in stored] == [1] and stored[0].private_pem == mine[0].private_pem
        pairs = set(cas[n * CALLERS:(n + 1) * CALLERS])
        assert len(pairs) == 1, f"mesh {mesh}: {len(pairs)} different CAs handed out"
        assert await secrets.existing_builtin_ca(writers[0], mesh, "ca-1") == next(iter(pairs))
        CertificateAuthority(*next(iter(pairs)))  # the stored certificate belongs to the stored key


async def test_concurrent_revocations_all_persist(writers: list[ResourceStore]) -> None:
    jtis = [f"jti-{i:03d}" for i in range(100)]
    await asyncio.gather(*(secrets.revoke(writers[i % 2], "default", jti) for i, jti in enumerate(jtis)))
    assert await secrets.revoked(writers[0], "default") == frozenset(jtis)
    await secrets.revoke(writers[1], "default", "jti-007")  # revoking again changes nothing
    assert await secrets.revoked(writers[1], "default") == frozenset(jtis)


async def test_racing_rotations_never_overwrite_a_key(writers: list[ResourceStore]) -> None:
    await secrets.ensure_signing_key(writers[0], "default")
    made = await asyncio.gather(*(secrets.rotate_signing_key(writers[i % 2], "default") for i in range(6)))
    assert sorted(k.serial for k in made) == [2, 3, 4, 5, 6, 7]
    stored = {k.serial: k.private_pem for k in await secrets.signing_keys(writers[0], "default")}
    assert all(stored[k.serial] == k.private_pem for k in made)  # every key a caller got still verifies


async def test_a_ca_whose_creator_stopped_after_the_key_is_completed(writers: list[ResourceStore]) -> None:
    _, key_name = secrets._ca_names("default", "ca-1")
    _, key_pem = await asyncio.to_thread(secrets.ca_mod.generate_root_ca, "default", "ca-1")
    await writers[0].create("Secret", "default", key_name, secrets._doc("default", key_name, key_pem))
    cert_pem, got_key = await secrets.builtin_ca(writers[1], "default", "ca-1", wait=0.1)
    assert got_key == key_pem
    CertificateAuthority(cert_pem, got_key)
    assert await secrets.existing_builtin_ca(writers[0], "default", "ca-1") == (cert_pem, key_pem)


class GatedVipWrites:
    """The real store, except that VirtualIPs writes wait for `gate`: holds one replica between reading the
    stored VIPs and writing its own allocation, which is exactly the window two replicas race in."""

    def __init__(self, store: ResourceStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in ("create", "update", "upsert"):
            return attr

        async def gated(kind: str, *args: Any, **kwargs: Any) -> Any:
            if kind == vip.KIND:
                self.held.set()
                await self.gate.wait()
            return await attr(kind, *args, **kwargs)

        return gated


def dataplane(name: str, service: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": service}}]}}


async def test_vip_allocation_of_a_slower_replica_does_not_overwrite_the_stored_one(
        writers: list[ResourceStore]) -> None:
    a_store, b_store = writers
    await a_store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    await a_store.create("Dataplane", "default", "web-1", dataplane("web-1", "web"))
    gated = GatedVipWrites(b_store)
    b = XdsSync(gated, cache=None, vip_cidr="10.100.0.0/24")  # type: ignore[arg-type]
    slow = asyncio.create_task(b._rebuild("default"))  # read: no VIPs, one service → web=.1
    await asyncio.wait_for(gated.held.wait(), 5)
    # Meanwhile replica A sees one more service and stores its allocation first.
    await a_store.create("Dataplane", "default", "aaa-1", dataplane("aaa-1", "aaa"))
    a = XdsSync(a_store, cache=None, vip_cidr="10.100.0.0/24")
    await a._rebuild("default")
    stored = {"aaa": "10.100.0.1", "web": "10.100.0.2"}
    assert vip.vips_from_doc((await a_store.get(vip.KIND, "default", vip.NAME)).doc) == stored
    gated.gate.set()
    await slow
    # B's stale allocation (web=.1) lost the compare-and-swap: what A stored stands, and B rebuilds from it.
    assert vip.vips_from_doc((await b_store.get(vip.KIND, "default", vip.NAME)).doc) == stored
    assert "default" in b._dirty
    state = await b._rebuild("default")
    assert state is not None and dict(state.ctx.vips) == stored
