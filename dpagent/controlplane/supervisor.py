"""Supervision for the control plane's background tasks: a task that dies is logged and restarted with backoff.

Without it a failure in the config sync loop went unseen and the CP silently stopped pushing config. Every
long-running CP task and every fire-and-forget job goes through here, so a failure is always visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dpagent.log import kv

log = logging.getLogger("dpagent.cp.supervisor")

Factory = Callable[[], Coroutine[Any, Any, Any]]


@dataclasses.dataclass
class TaskStatus:
    """What the CP's /metrics shows about one supervised task."""

    name: str
    restarts: int = 0
    running: bool = False
    last_error: str = ""
    last_error_at: float | None = None


class Supervisor:
    """Runs named forever-tasks; a crash is logged with its traceback and the task restarts after a backoff that
    doubles up to `max_backoff` and resets once the task has run for `healthy_after` seconds."""

    def __init__(self, *, backoff: float = 0.5, max_backoff: float = 30.0, healthy_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: set[asyncio.Task[Any]] = set()
        self.status: dict[str, TaskStatus] = {}

    def start(self, name: str, factory: Factory, *, on_restart: Callable[[], None] | None = None) -> None:
        """Run `factory()` until stop(); `on_restart` runs before each restart (e.g. to force a full resync)."""
        if name in self._tasks:
            raise RuntimeError(f"supervised task {name!r} is already running")
        self.status[name] = TaskStatus(name)
        self._tasks[name] = asyncio.create_task(self._loop(name, factory, on_restart), name=name)

    def spawn(self, name: str, coro: Awaitable[Any]) -> None:
        """A one-shot job whose failure is logged (it is not restarted); stop() cancels it."""
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job %s failed", name)

        task = asyncio.create_task(run(), name=name)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _loop(self, name: str, factory: Factory, on_restart: Callable[[], None] | None) -> None:
        st = self.status[name]
        delay = self.backoff
        while True:
            started = self._clock()
            st.running = True
            try:
                await factory()
                message = "returned unexpectedly"
            except asyncio.CancelledError:
                st.running = False
                raise
            except Exception as e:
                log.exception("control-plane task %s crashed; restarting it", name)
                message = f"{type(e).__name__}: {e}"
            st.running = False
            st.restarts += 1
            st.last_error, st.last_error_at = message, time.time()
            if self._clock() - started >= self.healthy_after:
                delay = self.backoff
            kv(log, logging.ERROR, "restarting control-plane task", task=name, reason=message,
               restarts=st.restarts, backoff_s=round(delay, 2))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            if on_restart is not None:
                try:
                    on_restart()
                except Exception:
                    log.exception("restart hook of %s failed", name)

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._jobs]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def prometheus(self) -> list[str]:
        """Restart counters and liveness per task, for the CP's /metrics."""
        lines = ["# TYPE dpagent_cp_task_restarts_total counter"]
        lines += [f'dpagent_cp_task_restarts_total{{task="{s.name}"}} {s.restarts}' for s in self.status.values()]
        lines.append("# TYPE dpagent_cp_task_running gauge")
        lines += [f'dpagent_cp_task_running{{task="{s.name}"}} {int(s.running)}' for s in self.status.values()]
        return lines
