"""Choosing and configuring the CP's store: Kuma's `store.*` keys and KUMA_STORE_* names through the Setting
table, every problem reported at once, and `dpagent cp migrate up` on the SQLite default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpagent.controlplane.settings import build_cp_config
from dpagent.controlplane.store.pgconfig import PostgresConfig
from dpagent.errors import ConfigError


def test_sqlite_is_the_default() -> None:
    cfg = build_cp_config({}, env={})
    assert cfg.store_type == "sqlite"


def test_postgres_settings_from_env_file_and_flags_with_kuma_names() -> None:
    env = {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_HOST": "db.internal",
           "KUMA_STORE_POSTGRES_PASSWORD": "s3cret", "KUMA_STORE_POSTGRES_TLS_MODE": "verifyFull",
           "KUMA_STORE_POSTGRES_TLS_CA_PATH": "/etc/pg/ca.pem", "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS": "20",
           "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT": "2s"}
    file_doc = {"store": {"postgres": {"port": 6432, "dbName": "mesh", "user": "from-file"}}}
    cfg = build_cp_config({"pg_user": "from-flag"}, env=env, file_doc=file_doc)
    assert cfg.postgres == PostgresConfig(host="db.internal", port=6432, user="from-flag", password="s3cret",
                                          db_name="mesh", tls_mode="verifyFull", tls_ca_path="/etc/pg/ca.pem",
                                          max_open_connections=20, connection_timeout=2.0)
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(cfg.postgres)
    assert cfg.postgres.describe() == "postgresql://from-flag@db.internal:6432/mesh"


def test_every_store_problem_is_reported_at_once() -> None:
    env = {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_TLS_CERT_PATH": "/c.pem",
           "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS": "1"}
    with pytest.raises(ConfigError) as err:
        build_cp_config({}, env=env)
    msg = str(err.value)
    assert "certPath and store.postgres.tls.keyPath go together" in msg
    assert "client certificate is set but store.postgres.tls.mode is disable" in msg
    assert "maxOpenConnections must be at least 2" in msg
    with pytest.raises(ConfigError, match=r"env KUMA_STORE_TYPE: 'mysql' is not one of sqlite, postgres"):
        build_cp_config({}, env={"KUMA_STORE_TYPE": "mysql"})
    with pytest.raises(ConfigError, match=r"KUMA_STORE_POSTGRES_TLS_MODE: 'require' is not one of disable"):
        build_cp_config({}, env={"KUMA_STORE_POSTGRES_TLS_MODE": "require"})


def test_a_missing_ca_file_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"cannot load the PostgreSQL CA bundle /nope.pem.*tls.caPath"):
        PostgresConfig(tls_mode="verifyCa", tls_ca_path="/nope.pem").ssl_context()


def test_migrate_up_on_sqlite_and_flags_in_help(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}

    def dpagent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dpagent", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    from dpagent.controlplane.store.sqlite import MIGRATIONS

    n = len(MIGRATIONS)
    first = dpagent("cp", "migrate", "up", "--data-dir", str(tmp_path))
    assert first.returncode == 0 and f"from schema version 0 to {n}" in first.stdout, first.stderr
    again = dpagent("cp", "migrate", "up", "--data-dir", str(tmp_path))
    assert again.returncode == 0 and f"already at schema version {n}; nothing to do" in again.stdout
    assert (tmp_path / "store.db").exists()
    helptext = dpagent("cp", "run", "--help").stdout
    assert "--store-type" in helptext and "KUMA_STORE_TYPE" in helptext and "--store-postgres-host" in helptext


def test_asyncpg_is_loaded_only_for_a_postgres_store() -> None:
    """The agent's RSS budget, and an SQLite CP's, must not pay for the PostgreSQL driver."""
    code = ("import sys, dpagent.cli.run, dpagent.agent.app, dpagent.controlplane.app, dpagent.cli.cp; "
            "sys.exit('asyncpg imported' if 'asyncpg' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
