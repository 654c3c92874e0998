"""The PostgreSQL store's schema, its migrations, and connecting with errors that say what to fix.

Migrations run only from `dpagent cp migrate up`, never implicitly at CP start: with several replicas, an upgrade
rolled out one replica at a time must not have the first new replica change the schema under the old ones. A CP
refuses to start on a schema older or newer than it knows, naming the command to run.

Change events come from the database itself: a row trigger numbers each change from one counter row and sends
it with `pg_notify`, so every replica (and any write made by hand in psql) produces the same, gap-free stream.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import asyncpg

from dpagent.controlplane.store.pgconfig import PostgresConfig
from dpagent.errors import ConfigError

CHANNEL = "dpagent_changes"
MIGRATE_HINT = "dpagent cp migrate up"

# Each entry moves the schema one version up; never edit a released entry, append a new one.
# Text columns use the "C" collation so listings sort by code point whatever the database's locale, as SQLite does.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE resources (
        kind     text COLLATE "C" NOT NULL,
        mesh     text COLLATE "C" NOT NULL,
        name     text COLLATE "C" NOT NULL,
        version  bigint NOT NULL,
        doc      text NOT NULL,
        created  double precision NOT NULL,
        modified double precision NOT NULL,
        PRIMARY KEY (kind, mesh, name)
    );
    CREATE INDEX resources_by_mesh ON resources (mesh, kind, name);
    CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO counters (name, value) VALUES ('revision', 0);
    CREATE FUNCTION resources_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        rev bigint;
    BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value INTO rev;
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('{CHANNEL}', json_build_array(rev, OLD.kind, OLD.mesh, OLD.name, 'delete',
                                                          OLD.version)::text);
        ELSE
            PERFORM pg_notify('{CHANNEL}', json_build_array(rev, NEW.kind, NEW.mesh, NEW.name,
                CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END, NEW.version)::text);
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER resources_changed AFTER INSERT OR UPDATE OR DELETE ON resources
        FOR EACH ROW EXECUTE FUNCTION resources_changed();
    """,
    # The audit log, written in the transaction of the change it records (see store/auditrows.py).
    """
    CREATE TABLE audit (
        id      bigserial PRIMARY KEY,
        at      double precision NOT NULL,
        who     text COLLATE "C" NOT NULL,
        groups_ text NOT NULL,
        source  text NOT NULL,
        access  text NOT NULL,
        kind    text COLLATE "C" NOT NULL,
        mesh    text COLLATE "C" NOT NULL,
        name    text COLLATE "C" NOT NULL,
        outcome text NOT NULL,
        detail  text NOT NULL,
        before_digest text NOT NULL,
        after_digest  text NOT NULL
    );
    CREATE INDEX audit_by_who ON audit (who, id);
    CREATE INDEX audit_by_at ON audit (at);
    """,
]

#: Any constant works; it only has to be the same for every dpagent that migrates this database.
_MIGRATION_LOCK = 0x64706167656E74


def connect_kwargs(cfg: PostgresConfig) -> dict[str, Any]:
    problems = cfg.problems()
    if problems:
        raise ConfigError("invalid PostgreSQL store settings:\n" + "\n".join(f"  - {p}" for p in problems))
    return {"host": cfg.host, "port": cfg.port, "user": cfg.user, "password": cfg.password or None,
            "database": cfg.db_name, "ssl": cfg.ssl_context(), "timeout": cfg.connection_timeout,
            "server_settings": {"application_name": "dpagent-cp"}}


def connect_error(cfg: PostgresConfig, exc: BaseException) -> ConfigError:
    """Turn a driver/socket failure into what to check, naming the settings involved."""
    where = cfg.describe()
    if isinstance(exc, asyncpg.InvalidPasswordError):
        why = ("the server rejected the user or password; check store.postgres.user/password "
               "(KUMA_STORE_POSTGRES_USER, KUMA_STORE_POSTGRES_PASSWORD)")
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        why = (f'database "{cfg.db_name}" does not exist; create it (CREATE DATABASE) or fix store.postgres.dbName '
               "(KUMA_STORE_POSTGRES_DB_NAME)")
    elif isinstance(exc, TimeoutError | asyncio.TimeoutError):
        why = (f"no answer within {cfg.connection_timeout:g}s; check store.postgres.host/port and "
               "store.postgres.connectionTimeout")
    elif isinstance(exc, ssl.SSLError):
        why = (f"TLS handshake failed ({exc.reason or exc}); check store.postgres.tls.mode and tls.caPath "
               "(KUMA_STORE_POSTGRES_TLS_MODE, KUMA_STORE_POSTGRES_TLS_CA_PATH)")
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) and "no encryption" in str(exc):
        why = (f"the server accepts only TLS connections ({exc}); set store.postgres.tls.mode "
               "(KUMA_STORE_POSTGRES_TLS_MODE) to verifyFull, verifyCa or verifyNone")
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) and "certificate" in str(exc):
        why = (f"the server wants a client certificate ({exc}); set store.postgres.tls.certPath and keyPath "
               "(KUMA_STORE_POSTGRES_TLS_CERT_PATH, KUMA_STORE_POSTGRES_TLS_KEY_PATH)")
    elif isinstance(exc, OSError):
        why = (f"cannot connect ({exc.strerror or exc}); is PostgreSQL running there? check store.postgres.host/"
               "port (KUMA_STORE_POSTGRES_HOST, KUMA_STORE_POSTGRES_PORT)")
    else:
        why = f"{type(exc).__name__}: {exc}; check the store.postgres.* settings (tls.mode among them)"
    return ConfigError(f"cannot use the PostgreSQL store {where}: {why}")


async def connect(cfg: PostgresConfig) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**connect_kwargs(cfg))
    except ConfigError:
        raise
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise connect_error(cfg, e) from None


async def schema_version(conn: asyncpg.Connection) -> int:
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def check_schema(conn: asyncpg.Connection, cfg: PostgresConfig) -> None:
    """Refuse a database this dpagent cannot serve from, saying which command fixes it."""
    encoding = await conn.fetchval("SHOW server_encoding")
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        raise ConfigError(f"the PostgreSQL store {cfg.describe()} uses encoding {encoding}; resources are Unicode, "
                          f"create the database with ENCODING 'UTF8'")
    current, wanted = await schema_version(conn), len(MIGRATIONS)
    if current < wanted:
        state = "is empty (no dpagent schema)" if current == 0 else f"has schema version {current}"
        raise ConfigError(f"the PostgreSQL store {cfg.describe()} {state}; this dpagent needs version {wanted}. "
                          f"Run `{MIGRATE_HINT}` with the same store settings, then start the control plane")
    if current > wanted:
        raise ConfigError(f"the PostgreSQL store {cfg.describe()} has schema version {current}, newer than this "
                          f"dpagent supports ({wanted}); upgrade dpagent on this host")


async def migrate_up(cfg: PostgresConfig) -> tuple[int, int]:
    """Bring the schema to the newest version in one transaction; returns (before, after).

    An advisory lock makes concurrent runs (two replicas' deploy hooks) queue instead of both applying a step.
    """
    conn = await connect(cfg)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            current = await schema_version(conn)
            if current > len(MIGRATIONS):
                raise ConfigError(f"the PostgreSQL store {cfg.describe()} has schema version {current}, newer "
                                  f"than this dpagent supports ({len(MIGRATIONS)}); upgrade dpagent first")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            for script in MIGRATIONS[current:]:
                await conn.execute(script)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS))
        return current, len(MIGRATIONS)
    finally:
        await conn.close()
