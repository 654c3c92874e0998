"""Keeps the audit log within `audit.maxEntries` and `audit.maxAge`.

The sweep is idempotent (delete what is beyond the bounds), so every replica may run it: without a leader two
replicas sweeping at once delete the same rows, and the second finds nothing left to do. Run by the CP's
supervisor, so a failed sweep (the database away) is retried rather than ending retention for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from dpagent.controlplane.store import ResourceStore

log = logging.getLogger("dpagent.cp.audit")
INTERVAL = 300.0  # seconds between sweeps: the log grows by writes, which are rare next to reads


async def sweep_once(store: ResourceStore, max_entries: int, max_age: float,
                     clock: Callable[[], float] = time.time) -> int:
    gone = await store.sweep_audit(keep=max_entries or None, older_than=(clock() - max_age) if max_age else None)
    if gone:
        log.info("swept the audit log", extra={"kv": {"removed": gone}})
    return gone


def retention(store: ResourceStore, max_entries: int, max_age: float, interval: float = INTERVAL
              ) -> Callable[[], Coroutine[Any, Any, None]]:
    """A supervisor factory: sweep now, then every `interval` seconds."""

    async def run() -> None:
        while True:
            await sweep_once(store, max_entries, max_age)
            await asyncio.sleep(interval)

    return run
