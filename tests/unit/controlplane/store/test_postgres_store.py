"""PostgreSQL-only properties on a real server: schema gate and `cp migrate up`, connection errors, several
replicas sharing one database (one event order, compare-and-swap), writes made outside dpagent, and a lost
change listener turning into the subscribers' resync path."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pgserver import PgServer, open_pg_store, start_or_skip, store_config, store_env
from testlib import make_ca_and_server_cert

from dpagent.controlplane.store import ChangeEvent, StoreUnavailable, SubscriptionOverflow
from dpagent.controlplane.store.pgschema import MIGRATIONS, migrate_up
from dpagent.controlplane.store.postgres import PostgresStore
from dpagent.errors import ConfigError, Conflict


@pytest.fixture
async def replicas(pg_server: PgServer, pg_database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database: what two CP replicas have."""
    a = await open_pg_store(pg_server, pg_database)
    b = await PostgresStore.open(store_config(pg_server, pg_database))
    yield a, b
    await a.close()
    await b.close()


async def events(sub: object, n: int) -> list[ChangeEvent]:
    return [await asyncio.wait_for(anext(sub), 5) for _ in range(n)]  # type: ignore[call-overload]


async def cli(server: PgServer, database: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    env.update(store_env(server, database))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dpagent", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_cp_refuses_an_unmigrated_database_until_migrate_up(pg_server: PgServer, pg_database: str,
                                                                   tmp_path: object) -> None:
    cfg = store_config(pg_server, pg_database)
    with pytest.raises(ConfigError, match=r"is empty \(no dpagent schema\).*Run `dpagent cp migrate up`"):
        await PostgresStore.open(cfg)
    code, out = await cli(pg_server, pg_database, "cp", "run", "--data-dir", str(tmp_path))
    assert code == 2 and "dpagent cp migrate up" in out, out
    code, out = await cli(pg_server, pg_database, "cp", "migrate", "up")
    assert code == 0 and f"from schema version 0 to {len(MIGRATIONS)}" in out, out
    code, out = await cli(pg_server, pg_database, "cp", "migrate", "up")
    assert code == 0 and "nothing to do" in out, out
    async with await PostgresStore.open(cfg) as store:
        await store.create("Mesh", "", "default", {"name": "default"})


async def test_newer_schema_is_refused(pg_server: PgServer, pg_database: str) -> None:
    cfg = store_config(pg_server, pg_database)
    await migrate_up(cfg)
    conn = await asyncpg.connect(**pg_server.connect_kwargs(pg_database))  # type: ignore[arg-type]
    await conn.execute("UPDATE schema_version SET version = version + 1")
    await conn.close()
    with pytest.raises(ConfigError, match=r"newer than this dpagent supports.*upgrade dpagent"):
        await PostgresStore.open(cfg)
    with pytest.raises(ConfigError, match="newer"):
        await migrate_up(cfg)


async def test_concurrent_migrations_apply_once(pg_server: PgServer, pg_database: str) -> None:
    cfg = store_config(pg_server, pg_database)
    results = await asyncio.gather(*(migrate_up(cfg) for _ in range(4)))
    assert sorted(results) == [(0, len(MIGRATIONS))] + [(len(MIGRATIONS), len(MIGRATIONS))] * 3


async def test_connection_errors_name_the_setting_to_fix(pg_server: PgServer, pg_database: str) -> None:
    with pytest.raises(ConfigError, match=r"rejected the user or password.*KUMA_STORE_POSTGRES_PASSWORD"):
        await PostgresStore.open(store_config(pg_server, pg_database, password="wrong"))
    with pytest.raises(ConfigError, match=r'database "nope" does not exist.*KUMA_STORE_POSTGRES_DB_NAME'):
        await PostgresStore.open(store_config(pg_server, "nope"))
    from testlib import free_port

    with pytest.raises(ConfigError, match=r"cannot connect.*is PostgreSQL running there\?.*KUMA_STORE_POSTGRES_PORT"):
        await PostgresStore.open(store_config(pg_server, pg_database, port=free_port()))


async def test_replicas_share_one_event_order(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    sub_a, sub_b = await a.subscribe(), await b.subscribe()
    names = [f"dp-{i}" for i in range(20)]
    await asyncio.gather(*((a if i % 2 else b).create("Dataplane", "default", n, {"n": i})
                           for i, n in enumerate(names)))
    seen_a, seen_b = await events(sub_a, 20), await events(sub_b, 20)
    assert seen_a == seen_b  # same events, same order, on both replicas
    assert [e.revision for e in seen_a] == list(range(1, 21))
    assert sorted(e.name for e in seen_a) == sorted(names)
    assert await a.revision() == await b.revision() == 20
    # A replica reads what the other wrote, and sees it as soon as its own write returned.
    await a.update("Dataplane", "default", "dp-3", {"n": 33})
    assert (await b.get("Dataplane", "default", "dp-3")).doc == {"n": 33}


async def test_compare_and_swap_across_replicas_loses_no_update(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    await a.create("Secret", "default", "counter", {"n": 0})
    conflicts = 0

    async def bump(store: PostgresStore) -> None:
        nonlocal conflicts
        while True:
            rec = await store.get("Secret", "default", "counter")
            try:
                await store.update("Secret", "default", "counter", {"n": rec.doc["n"] + 1}, version=rec.version)
                return
            except Conflict:
                conflicts += 1

    await asyncio.gather(*(bump(a if i % 2 else b) for i in range(40)))
    rec = await b.get("Secret", "default", "counter")
    assert rec.doc == {"n": 40} and rec.version == 41
    assert conflicts > 0  # the writers really raced


async def test_create_if_absent_across_replicas_has_one_winner(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    results = await asyncio.gather(*((a if i % 2 else b).create("Secret", "m", "ca", {"i": i}) for i in range(10)),
                                   return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and all(isinstance(r, Conflict) for r in results if r not in winners)
    assert (await a.get("Secret", "m", "ca")).doc == winners[0].doc


Replicas = tuple[PostgresStore, PostgresStore]


async def test_writes_made_outside_dpagent_are_events(pg_server: PgServer, replicas: Replicas,
                                                      pg_database: str) -> None:
    a, _ = replicas
    sub = await a.subscribe()
    conn = await asyncpg.connect(**pg_server.connect_kwargs(pg_database))  # type: ignore[arg-type]
    try:
        await conn.execute("INSERT INTO resources VALUES ('Mesh', '', 'by-hand', 1, '{}', 0, 0)")
        await conn.execute("DELETE FROM resources WHERE name = 'by-hand'")
    finally:
        await conn.close()
    got = await events(sub, 2)
    assert [(e.kind, e.name, e.op, e.version, e.revision) for e in got] == [
        ("Mesh", "by-hand", "create", 1, 1), ("Mesh", "by-hand", "delete", 1, 2)]


async def test_lost_listener_becomes_overflow_and_recovers(pg_server: PgServer,
                                                           replicas: tuple[PostgresStore, PostgresStore],
                                                           pg_database: str) -> None:
    a, b = replicas
    sub = await a.subscribe()
    await b.create("Dataplane", "default", "before", {})
    assert (await events(sub, 1))[0].name == "before"
    # Kill a's listener connection from the server side, as a failover or network cut would.
    pid = a.listener._conn.get_server_pid()  # type: ignore[union-attr]
    conn = await asyncpg.connect(**pg_server.connect_kwargs(pg_database))  # type: ignore[arg-type]
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    with pytest.raises(SubscriptionOverflow):
        await asyncio.wait_for(anext(sub), 5)
    # A write during or after the outage never hangs the writer.
    await asyncio.wait_for(a.create("Dataplane", "default", "during", {}), 5)
    for _ in range(100):
        if a.listener.listening and a.listener.losses == 1:
            break
        await asyncio.sleep(0.05)
    assert a.listener.listening and a.listener.losses == 1
    sub.resync()
    # Back to live delivery: after the second overflow (sent when LISTEN is active again), events flow again.
    if sub.overflowed:
        sub.resync()
    await b.create("Dataplane", "default", "after", {})
    got = await events(sub, 1)
    assert got[0].name == "after" and got[0].revision == await b.revision()


async def test_server_restart_is_unavailable_then_resync_then_live_again() -> None:
    """A server of its own, since this one goes down: calls fail with StoreUnavailable (never hang), the
    listener's loss reaches subscribers as an overflow, and after the restart writes and events flow again."""
    server = await asyncio.to_thread(start_or_skip)
    try:
        database = await server.create_database()
        store = await open_pg_store(server, database)
        store.listener.ping_interval = 0.2
        try:
            sub = await store.subscribe()
            await store.create("Mesh", "", "before", {})
            await events(sub, 1)
            await asyncio.to_thread(server.stop_server)
            with pytest.raises(StoreUnavailable, match="is unreachable"):
                await asyncio.wait_for(store.get("Mesh", "", "before"), 10)
            with pytest.raises(SubscriptionOverflow):
                await asyncio.wait_for(anext(sub), 5)
            sub.resync()
            await asyncio.to_thread(server.start_server)
            for _ in range(200):
                if store.listener.listening:
                    break
                await asyncio.sleep(0.05)
            assert store.listener.listening
            if sub.overflowed:  # the second overflow, sent once LISTEN was active again
                sub.resync()
            rec = await asyncio.wait_for(store.create("Mesh", "", "after", {}), 10)
            got = await events(sub, 1)
            assert (got[0].name, got[0].revision) == ("after", 2) and rec.version == 1
            assert (await store.get("Mesh", "", "before")) is not None
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_tls_modes_against_a_tls_only_server(tmp_path: Path) -> None:
    """verifyFull checks chain and name, verifyCa only the chain, verifyNone nothing; plaintext is refused."""
    good = make_ca_and_server_cert(["127.0.0.1"])
    other = make_ca_and_server_cert(["127.0.0.1"])
    for name, pem in (("ca.pem", good["ca"]), ("other-ca.pem", other["ca"])):
        (tmp_path / name).write_bytes(pem)
    server = await asyncio.to_thread(start_or_skip, good)
    try:
        database = await server.create_database()
        await migrate_up(store_config(server, database, tls_mode="verifyFull", tls_ca_path=str(tmp_path / "ca.pem")))
        for mode in ("verifyFull", "verifyCa", "verifyNone"):
            cfg = store_config(server, database, tls_mode=mode, tls_ca_path=str(tmp_path / "ca.pem"))
            async with await PostgresStore.open(cfg) as store:
                await store.upsert("Mesh", "", mode, {})
        with pytest.raises(ConfigError, match=r"TLS handshake failed.*CERTIFICATE_VERIFY_FAILED.*tls.caPath"):
            await PostgresStore.open(store_config(server, database, tls_mode="verifyCa",
                                                  tls_ca_path=str(tmp_path / "other-ca.pem")))
        with pytest.raises(ConfigError, match=r"accepts only TLS connections.*set store.postgres.tls.mode"):
            await PostgresStore.open(store_config(server, database, tls_mode="disable"))
    finally:
        await asyncio.to_thread(server.stop)


async def test_client_certificate_authentication(tmp_path: Path) -> None:
    server_tls = make_ca_and_server_cert(["127.0.0.1"])
    client = make_ca_and_server_cert(["dpagent_test"])  # CN = the database user, as `clientcert=verify-full` wants
    for name in ("ca", "cert", "key"):
        (tmp_path / f"server-{name}.pem").write_bytes(server_tls[name])
        (tmp_path / f"client-{name}.pem").write_bytes(client[name])
    server = await asyncio.to_thread(start_or_skip, {**server_tls, "client_ca": client["ca"]})
    try:
        database = await server.create_database()
        tls = {"tls_mode": "verifyFull", "tls_ca_path": str(tmp_path / "server-ca.pem")}
        with_cert = store_config(server, database, **tls, tls_cert_path=str(tmp_path / "client-cert.pem"),
                                 tls_key_path=str(tmp_path / "client-key.pem"))
        await migrate_up(with_cert)
        async with await PostgresStore.open(with_cert) as store:
            await store.create("Mesh", "", "default", {})
        with pytest.raises(ConfigError, match=r"wants a client certificate.*KUMA_STORE_POSTGRES_TLS_CERT_PATH"):
            await PostgresStore.open(store_config(server, database, **tls))
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_gap_in_revisions_makes_subscribers_resync(pg_server: PgServer, pg_database: str) -> None:
    """Revisions are gap-free by construction; a gap means notifications were lost, which only a reload repairs."""
    async with await open_pg_store(pg_server, pg_database) as store:
        sub = await store.subscribe()
        conn = await asyncpg.connect(**pg_server.connect_kwargs(pg_database))  # type: ignore[arg-type]
        try:
            await conn.execute("UPDATE counters SET value = value + 5 WHERE name = 'revision'")  # no NOTIFY
        finally:
            await conn.close()
        await store.create("Mesh", "", "m", {})
        with pytest.raises(SubscriptionOverflow):
            await asyncio.wait_for(anext(sub), 5)
        sub.resync()
        await store.create("Mesh", "", "n", {})
        assert [(e.name, e.revision) for e in await events(sub, 1)] == [("n", 7)]


async def test_a_listener_whose_server_stops_answering_is_replaced(pg_server: PgServer, pg_database: str) -> None:
    """No FIN, no error: the listener's backend just stops answering (SIGSTOP, like a network partition). The
    periodic ping notices, subscribers resync, and a fresh listener delivers again."""
    async with await open_pg_store(pg_server, pg_database) as store:
        store.listener.ping_interval = 0.2
        sub = await store.subscribe()
        pid = store.listener._conn.get_server_pid()  # type: ignore[union-attr]
        try:
            os.kill(pid, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("cannot signal the server's backend (needs root or the postgres user)")
        try:
            with pytest.raises(SubscriptionOverflow):
                await asyncio.wait_for(anext(sub), 5)
            for _ in range(100):
                if store.listener.listening and store.listener.losses:
                    break
                await asyncio.sleep(0.05)
            assert store.listener.losses == 1 and store.listener._conn.get_server_pid() != pid  # type: ignore
        finally:
            os.kill(pid, signal.SIGCONT)
        sub.resync()
        if sub.overflowed:
            sub.resync()
        await store.create("Mesh", "", "after", {})
        assert (await events(sub, 1))[0].name == "after"
