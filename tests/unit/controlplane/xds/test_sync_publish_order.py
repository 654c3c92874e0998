"""A proxy's config never goes back in time: a first config built before a new service registered, finishing after
the push that added the service, must not replace that push (a CI run left a proxy without its backend)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds import sync as sync_mod
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.snapshot import CLUSTER
from dpagent.controlplane.xds.sync import XdsSync


def dataplane(name: str, service: str, i: int) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": f"10.0.0.{i}", "inbound": [{"port": 8080, "tags": {"kuma.io/service": service}}],
        "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}}


async def test_a_slow_first_config_does_not_undo_a_newer_push(monkeypatch) -> None:
    store = await MemoryStore.open()
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    await store.create("Dataplane", "default", "web-1", dataplane("web-1", "web", 1))
    release = threading.Event()
    real = sync_mod.proxy_snapshot

    def slow_before_backend(state: Any, dp: Any) -> Any:
        if "backend-1" not in state.by_name:
            release.wait(10)  # the first config, built from the mesh without backend, takes its time
        return real(state, dp)

    monkeypatch.setattr(sync_mod, "proxy_snapshot", slow_before_backend)
    cache = SnapshotCache()
    sync = XdsSync(store, cache, debounce=0.01)
    runner = asyncio.create_task(sync.run())
    connecting = asyncio.create_task(sync.on_connect("default", "web-1"))
    try:
        await asyncio.sleep(0.2)  # web-1's first config is being built
        await store.create("Dataplane", "default", "backend-1", dataplane("backend-1", "backend", 2))

        def has_backend() -> bool:
            snap = cache.get_snapshot("default.web-1")
            return snap is not None and any("backend" in name for name in snap.resources(CLUSTER))

        for _ in range(100):
            if has_backend():
                break
            await asyncio.sleep(0.02)
        assert has_backend(), "the push that added backend reached web-1"
        release.set()
        await asyncio.wait_for(connecting, 5)
        await asyncio.sleep(0.1)
        assert has_backend(), "the older first config, finished later, must not replace the newer push"
    finally:
        release.set()
        for task in (runner, connecting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()
