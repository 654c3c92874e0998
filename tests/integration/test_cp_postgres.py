"""Two real `dpagent cp run` processes on one real PostgreSQL, configured through Kuma's KUMA_STORE_* variables
after `dpagent cp migrate up`: a mesh applied through both APIs at once ends up with one token signing key and one
builtin CA whose certificate matches its key, and what one replica writes the other serves. (The deterministic
race tests are in tests/unit/controlplane/test_store_races.py.)"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pgserver import PgServer, open_pg_store, store_env
from testlib import LocalControlPlane, wait_for

from dpagent.controlplane import secrets
from dpagent.controlplane.ca import CertificateAuthority
from dpagent.controlplane.store.sealed import SealedStore, parse_key

#: Replicas on one store share the key that seals Secrets (each would otherwise make its own and the second refuse
#: to start); given inline here, as replicas on several hosts would get it.
SECRETS_KEY = base64.b64encode(b"k" * 32).decode()


def cp_env(server: PgServer, database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    return {**env, **store_env(server, database), "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS": "5",
            "DPAGENT_SECRETS_KEY": SECRETS_KEY}


@pytest.fixture
def replicas(tmp_path: Path, pg_server: PgServer, pg_database: str) -> Iterator[list[LocalControlPlane]]:
    # Migrate with the real command, as an operator would before starting the replicas.
    migrate = subprocess.run([sys.executable, "-m", "dpagent", "cp", "migrate", "up"], capture_output=True,
                             text=True, env=cp_env(pg_server, pg_database), timeout=60)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    cps = [LocalControlPlane(tmp_path / f"cp{i}") for i in range(2)]
    procs = []
    for cp in cps:  # started together: both run first-start setup against the same, empty database
        log = open(cp.data_dir.parent / f"{cp.data_dir.name}.log", "w")  # noqa: SIM115 - lives with the process
        procs.append(subprocess.Popen(cp.command(sys.executable), stdout=log, stderr=subprocess.STDOUT, text=True,
                                      env=cp_env(pg_server, pg_database)))
    try:
        for cp, proc in zip(cps, procs, strict=True):
            wait_for(lambda cp=cp, proc=proc: proc.poll() is None and httpx.get(cp.api, timeout=1).is_success, 30,
                     what=f"control plane API {cp.api}")
        yield cps
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                assert proc.wait(15) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()


def put_mesh(cp: LocalControlPlane, name: str) -> int:
    doc = {"type": "Mesh", "name": name, "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1",
                                                                                        "type": "builtin"}]}}
    return httpx.put(f"{cp.api}/meshes/{name}", json=doc, timeout=30).status_code


async def test_two_cp_replicas_share_one_store(replicas: list[LocalControlPlane], pg_server: PgServer,
                                               pg_database: str) -> None:
    a, b = replicas
    codes = await asyncio.gather(*(asyncio.to_thread(put_mesh, cp, "payments") for cp in (a, b, a, b)))
    assert all(c in (200, 201) for c in codes), codes
    store = SealedStore(await open_pg_store(pg_server, pg_database), parse_key(SECRETS_KEY, "test"))
    try:
        for mesh in ("default", "payments"):
            assert [k.serial for k in await secrets.signing_keys(store, mesh)] == [1], mesh
            names = sorted(r.name for r in await store.list("Secret", mesh=mesh) if ".ca-builtin-" in r.name)
            assert names == [f"{mesh}.ca-builtin-cert-ca-1", f"{mesh}.ca-builtin-key-ca-1"], names
            pair = await secrets.existing_builtin_ca(store, mesh, "ca-1")
            assert pair is not None
            CertificateAuthority(*pair)  # raises if the certificate and key came from different writers
        assert [r.name for r in await store.list("Mesh")] == ["default", "payments"]
    finally:
        await store.close()
    # What one replica's API wrote, the other's serves.
    listed = httpx.get(f"{b.api}/meshes", timeout=10).json()
    assert sorted(m["name"] for m in listed["items"]) == ["default", "payments"]
