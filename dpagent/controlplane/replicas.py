"""What changes when the store is shared by several CP replicas: how the leader is chosen, whether the store is
reachable, and how the CA-rotation gate counts proxies. SQLite (one process) gets the trivial answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dpagent.controlplane import leader as leader_mod
from dpagent.controlplane.bundle_acks import BundleAcks
from dpagent.controlplane.settings import CpConfig
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.xds.sync import XdsSync

Gate = Callable[[str, str], Awaitable[bool]]


def leadership(cfg: CpConfig, store: ResourceStore) -> tuple[leader_mod.Leadership, Callable[[], bool]]:
    """(the election, whether the store is reachable right now)."""
    instance = leader_mod.new_instance_id()
    if cfg.store_type != "postgres":
        return leader_mod.SoleLeader(instance), lambda: True
    from dpagent.controlplane.store import pgschema
    from dpagent.controlplane.store.postgres import PostgresStore
    from dpagent.controlplane.store.sealed import SealedStore

    inner = store.inner if isinstance(store, SealedStore) else store  # secrets are sealed by a wrapper
    assert isinstance(inner, PostgresStore)
    pg = cfg.postgres

    async def connect(settings: dict[str, str]) -> Any:
        import asyncpg

        return await asyncpg.connect(**{**pgschema.connect_kwargs(pg), "server_settings": settings})

    listener = inner.listener
    return leader_mod.PgLease(instance, connect, inner.query), lambda: listener.listening


def rotation_gate(cfg: CpConfig, store: ResourceStore, sync: XdsSync, lease: leader_mod.Leadership
                  ) -> tuple[Gate, BundleAcks | None]:
    """Whether leaves from a backend's root may be issued: this replica's proxies all ACKed that root and, with
    several replicas, every other replica says the same of its own (see bundle_acks). The BundleAcks, if any,
    must run supervised and be closed on stop."""
    if cfg.store_type != "postgres":
        async def local_only(mesh: str, backend: str) -> bool:
            return sync.issuable(mesh, backend)

        return local_only, None
    acks = BundleAcks(store, lease.instance_id, local=sync.issuable,
                      meshes=lambda: [(m, s.bundle_backends) for m, s in list(sync.states.items())],
                      is_leader=lambda: lease.is_leader)
    return acks.can_issue, acks
