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
