"""A crashed CP background task is logged and restarted; a dead store-event pump stops the sync loop loudly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dpagent.controlplane.store.memory import MemoryStore
from dpagent.controlplane.supervisor import Supervisor
from dpagent.controlplane.xds.sync import XdsSync


async def test_crashed_task_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    resyncs: list[int] = []
    forever = asyncio.Event()

    async def task() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await forever.wait()

    sup = Supervisor(backoff=0.01)
    with caplog.at_level(logging.ERROR, logger="dpagent.cp.supervisor"):
        sup.start("t", task, on_restart=lambda: resyncs.append(1))
        for _ in range(200):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.01)
    assert len(runs) == 3 and len(resyncs) == 2
    st = sup.status["t"]
    assert st.restarts == 2 and st.running and st.last_error == "RuntimeError: boom 2"
    assert "crashed" in caplog.text and "boom 1" in caplog.text
    assert 'dpagent_cp_task_restarts_total{task="t"} 2' in sup.prometheus()
    await sup.stop()
    assert not st.running


async def test_failed_job_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def job() -> None:
        raise ValueError("lost")

    sup = Supervisor()
    with caplog.at_level(logging.ERROR, logger="dpagent.cp.supervisor"):
        sup.spawn("deregister x", job())
        await asyncio.sleep(0.01)
    assert "deregister x failed" in caplog.text and "lost" in caplog.text
    await sup.stop()


class _BrokenSubscription:
    def __aiter__(self) -> _BrokenSubscription:
        return self

    async def __anext__(self) -> Any:
        raise OSError("store connection lost")


async def test_sync_loop_fails_when_its_event_pump_dies() -> None:
    """Before: the pump died inside its own task and run() kept idling, so no store change reached Envoy again."""
    store = MemoryStore()

    async def broken_subscribe(**_: Any) -> _BrokenSubscription:
        return _BrokenSubscription()

    store.subscribe = broken_subscribe  # type: ignore[method-assign]
    sync = XdsSync(store, cache=None, bundle_recheck=30)
    with pytest.raises(OSError, match="store connection lost"):
        await asyncio.wait_for(sync.run(), 2)


class _Cache:
    def __init__(self) -> None:
        self.snapshots: dict[str, Any] = {}

    def set_snapshot(self, node: str, snapshot: Any) -> bool:
        self.snapshots[node] = snapshot
        return True

    def clear(self, node: str) -> None:
        self.snapshots.pop(node, None)


async def test_a_failed_connect_batch_is_logged_fails_its_streams_and_later_connects_still_work(
        caplog: pytest.LogCaptureFixture) -> None:
    """The connect batcher was a bare task: if generating a batch raised, the error sat unseen in the task and the
    proxies queued behind that batch waited for a first snapshot forever."""
    store = MemoryStore()
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    for name in ("a", "b"):
        await store.create("Dataplane", "default", name, {
            "type": "Dataplane", "mesh": "default", "name": name, "networking": {
                "address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": name}}]}})
    sync = XdsSync(store, cache=_Cache())
    published: list[list[str]] = []
    real = sync._publish

    async def publish(state: Any, targets: list[str]) -> None:
        published.append(targets)
        if len(published) == 1:
            raise RuntimeError("generation blew up")
        await real(state, targets)

    sync._publish = publish  # type: ignore[method-assign]
    with (caplog.at_level(logging.ERROR, logger="dpagent.cp.sync"),
          pytest.raises(RuntimeError, match="first config failed: generation blew up")):
        await asyncio.wait_for(sync.on_connect("default", "a"), 5)
    assert "first config for 1 connecting proxies failed" in caplog.text
    await asyncio.wait_for(sync.on_connect("default", "b"), 5)  # the batcher still serves later connects
    assert published == [["default.a"], ["default.b"]] and list(sync.cache.snapshots) == ["default.b"]
