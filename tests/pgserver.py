"""A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl start` on a free loopback port.

Real server, no mocks: the store's SQL, triggers, LISTEN/NOTIFY and races are only worth testing against the real
thing. `initdb` refuses to run as root, so as root the cluster is created and run as the `postgres` system user
(Debian's `postgresql` package creates it) in a temp dir that user owns. Durability settings are relaxed (no fsync)
because a test database never needs to survive a power cut, and fsync would make every test commit slow.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from testlib import free_port

from dpagent.controlplane.store.pgconfig import PostgresConfig

if TYPE_CHECKING:
    from dpagent.controlplane.store.postgres import PostgresStore

SUPERUSER = "dpagent_test"


class PgUnavailable(RuntimeError):
    """PostgreSQL is not installed here: a skip with this reason, except under CI, which must install it."""


class PgFailed(RuntimeError):
    """PostgreSQL is installed but initdb/pg_ctl failed: always a test error, never a skip."""


def find_bindir() -> Path:
    """The newest installed server's bin dir (Debian keeps them out of PATH in /usr/lib/postgresql/<v>/bin)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0)
    for path in [*reversed(candidates), *(str(Path(p).parent) for p in [shutil.which("initdb")] if p)]:
        if all((Path(path) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(path)
    raise PgUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql` "
                        "package (apt-get install postgresql) to run the PostgreSQL store tests")


def start_or_skip(tls: dict[str, bytes] | None = None) -> PgServer:
    """Start a server, or skip the test when PostgreSQL is not installed (fail instead under CI, which installs
    Debian's `postgresql`: a silently skipped store backend is how a broken one lands)."""
    import pytest

    try:
        return PgServer.start(tls)
    except PgUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install PostgreSQL: {e}")
        pytest.skip(str(e))


@dataclass
class PgServer:
    """One running cluster. `user`/`password` is a superuser that logs in over TCP with SCRAM."""

    bindir: Path
    root: Path
    port: int
    password: str
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    _run_as: tuple[str, ...] = ()
    # {"cert", "key"} PEMs: serve TLS and refuse plaintext TCP logins; with "client_ca" also demand a client
    # certificate issued by it (CN = user name) on top of the password.
    tls: dict[str, bytes] | None = None

    @classmethod
    def start(cls, tls: dict[str, bytes] | None = None) -> PgServer:
        bindir = find_bindir()
        run_as: tuple[str, ...] = ()
        # Under /tmp rather than $TMPDIR: as root, the `postgres` user must be able to reach the directory.
        root = Path(tempfile.mkdtemp(prefix="dpagent-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PgUnavailable("running as root and there is no `postgres` user to run initdb as "
                                    "(Debian's postgresql package creates it)") from None
            os.chown(root, pw.pw_uid, pw.pw_gid)
            run_as = ("runuser", "-u", "postgres", "--")
        server = cls(bindir, root, free_port(), secrets.token_hex(12), _run_as=run_as, tls=tls)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._run_as, *args], capture_output=True, text=True, timeout=60, cwd=self.root)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PgFailed(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()} {tail}")

    def _private_file(self, name: str, data: bytes) -> Path:
        """A 0600 file the server's user owns (PostgreSQL refuses a key file others can read)."""
        path = self.root / name
        path.write_bytes(data)
        if self._run_as:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        path.chmod(0o600)
        return path

    def _init_and_start(self) -> None:
        pwfile = self._private_file("pwfile", (self.password + "\n").encode())
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "-E", "UTF8", "--no-locale", "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync")
        pwfile.unlink()
        if self.tls is not None:
            self._private_file("server.crt", self.tls["cert"])
            self._private_file("server.key", self.tls["key"])
            client = " clientcert=verify-full" if "client_ca" in self.tls else ""
            if client:
                self._private_file("client-ca.crt", self.tls["client_ca"])
            (self.data / "pg_hba.conf").write_text("local all all trust\n"
                                                   f"hostssl all all {self.host}/32 scram-sha-256{client}\n")
        self.start_server()

    def start_server(self) -> None:
        opts = (f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        if self.tls is not None:
            opts += f" -c ssl=on -c ssl_cert_file={self.root}/server.crt -c ssl_key_file={self.root}/server.key"
            if "client_ca" in self.tls:
                opts += f" -c ssl_ca_file={self.root}/client-ca.crt"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop without removing the data: `start_server()` brings the same cluster back (a restart/failover)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def data(self) -> Path:
        return self.root / "data"

    def connect_kwargs(self, database: str = "postgres") -> dict[str, object]:
        """A superuser session for test set-up, over the Unix socket (trusted, so it works whatever TLS demands)."""
        return {"host": str(self.root), "port": self.port, "user": self.user, "database": database}

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    async def create_database(self) -> str:
        """A fresh, empty database for one test (cheap: CREATE DATABASE copies template0's few MB)."""
        import asyncpg

        name = f"t_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(**self.connect_kwargs())  # type: ignore[arg-type]
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(**self.connect_kwargs())  # type: ignore[arg-type]
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def store_config(server: PgServer, database: str, **overrides: object) -> PostgresConfig:
    fields: dict[str, object] = {"host": server.host, "port": server.port, "user": server.user,
                                 "password": server.password, "db_name": database, "max_open_connections": 10,
                                 "min_open_connections": 1}
    return PostgresConfig(**{**fields, **overrides})  # type: ignore[arg-type]


async def open_pg_store(server: PgServer, database: str, **kwargs: object) -> PostgresStore:
    """A migrated, open PostgresStore on `database` (what `dpagent cp migrate up` + `cp run` would do)."""
    from dpagent.controlplane.store.pgschema import migrate_up
    from dpagent.controlplane.store.postgres import PostgresStore

    cfg = store_config(server, database)
    await migrate_up(cfg)
    return await PostgresStore.open(cfg, **kwargs)  # type: ignore[arg-type]


def store_env(server: PgServer, database: str) -> dict[str, str]:
    """The variables that point a `dpagent cp` process at `database`: KUMA_STORE_*, and the secrets key every
    replica on one database must share (derived from the database's name, so each test database has its own)."""
    key = base64.b64encode(hashlib.sha256(f"dpagent-test-{database}".encode()).digest()).decode()
    return {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_HOST": server.host,
            "KUMA_STORE_POSTGRES_PORT": str(server.port), "KUMA_STORE_POSTGRES_USER": server.user,
            "KUMA_STORE_POSTGRES_PASSWORD": server.password, "KUMA_STORE_POSTGRES_DB_NAME": database,
            "DPAGENT_SECRETS_KEY": key}
