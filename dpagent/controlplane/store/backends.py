"""Choosing the store backend from the CP config, and `dpagent cp migrate up` for each backend.

PostgreSQL support is imported here lazily, so an SQLite control plane (and never the agent) loads asyncpg.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dpagent.controlplane.settings import CpConfig
from dpagent.controlplane.store.base import ResourceStore
from dpagent.controlplane.store.sealed import SealedStore, load_key
from dpagent.controlplane.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from dpagent.controlplane.store.sqlite import SqliteStore


def sqlite_path(cfg: CpConfig) -> Path:
    return Path(cfg.data_dir) / "store.db"


def store_location(cfg: CpConfig) -> str:
    """Where the resources live, for logs (never includes a password)."""
    return cfg.postgres.describe() if cfg.store_type == "postgres" else str(sqlite_path(cfg))


async def open_store(cfg: CpConfig) -> ResourceStore:
    """SQLite creates and migrates its file itself (the zero-setup default); PostgreSQL must be migrated first.
    Either way Secrets are sealed with the CP's secrets key before they reach the database (`sealed.py`)."""
    box = load_key(cfg.data_dir, cfg.secrets_key_file, cfg.secrets_key)
    inner: ResourceStore
    if cfg.store_type == "postgres":
        from dpagent.controlplane.store.postgres import PostgresStore

        inner = await PostgresStore.open(cfg.postgres)
    else:
        inner = await SqliteStore.open(sqlite_path(cfg))
    try:
        return await SealedStore.open(inner, box)
    except BaseException:
        await inner.close()
        raise


@dataclass(frozen=True)
class Migrated:
    where: str
    before: int
    after: int


async def migrate_up(cfg: CpConfig) -> Migrated:
    if cfg.store_type == "postgres":
        from dpagent.controlplane.store import pgschema

        before, after = await pgschema.migrate_up(cfg.postgres)
        return Migrated(store_location(cfg), before, after)
    path = sqlite_path(cfg)
    before = await asyncio.to_thread(_sqlite_version, path)
    store = await SqliteStore.open(path)  # opening migrates (and refuses a newer schema)
    await store.close()
    return Migrated(store_location(cfg), before, len(SQLITE_MIGRATIONS))


def _sqlite_version(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
