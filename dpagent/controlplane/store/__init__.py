"""The control plane's resource store: one source of truth for Meshes, Dataplanes, policies and secrets."""

from dpagent.controlplane.store.base import (
    DEFAULT_MAX_PENDING,
    AuditEntry,
    AuditQuery,
    ChangeEvent,
    Record,
    ResourceStore,
    StoreClosed,
    StoreUnavailable,
    Subscription,
    SubscriptionOverflow,
)
from dpagent.controlplane.store.memory import MemoryStore
from dpagent.controlplane.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_MAX_PENDING",
    "AuditEntry",
    "AuditQuery",
    "ChangeEvent",
    "MemoryStore",
    "Record",
    "ResourceStore",
    "SqliteStore",
    "StoreClosed",
    "StoreUnavailable",
    "Subscription",
    "SubscriptionOverflow",
]
