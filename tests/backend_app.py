"""A misbehaving backend for the resilience e2e tests: one asyncio HTTP server with switches.

Every policy test needs the same few misbehaviours — answer late, fail a given share of requests, report itself
unhealthy, or stop answering its health path — and a way to tell which instance answered. Keeping them in one app
means a MeshRetry test and a MeshCircuitBreaker test exercise the same server, and a switch flipped mid-test
takes effect on the next request.

Errors are spread deterministically (request n fails when floor(n·rate) grows), so "30 % errors" is exactly 30 of
every 100 requests and a success-rate assertion does not depend on luck.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Health = Literal["ok", "fail", "hang"]


@dataclass
class Switches:
    delay: float = 0.0  # seconds before every answer (not the health path)
    error_rate: float = 0.0  # share of requests answered with `error_status`, 0..1
    error_status: int = 503
    health: Health = "ok"  # the health path: 200, 503, or no answer at all
    error_methods: frozenset[str] = field(default_factory=lambda: frozenset({"GET", "POST", "PUT", "DELETE"}))


class BackendApp:
    """`BackendApp("v1")` listens on 127.0.0.1:<port>; answers JSON {instance, method, path, headers, n} with an
    `x-instance` header; `/health` (or `health_path`) answers per `switches.health`."""

    def __init__(self, instance: str, *, health_path: str = "/health", **switches: Any) -> None:
        self.instance = instance
        self.health_path = health_path
        self.switches = Switches(**switches)
        self.requests = 0  # counted requests (not health checks)
        self.by_method: collections.Counter[str] = collections.Counter()
        self.health_checks = 0
        self._errors = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name=f"backend-{instance}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"backend app {instance} did not start")

    def set(self, **switches: Any) -> None:
        """Flip switches; the next request sees them."""
        for k, v in switches.items():
            if not hasattr(self.switches, k):
                raise AttributeError(f"no switch {k!r}; switches: {', '.join(Switches.__dataclass_fields__)}")
            setattr(self.switches, k, v)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._closing.set)  # hanging health checks end with the server
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- server -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _should_fail(self, method: str) -> bool:
        rate = self.switches.error_rate
        if rate <= 0 or method not in self.switches.error_methods:
            return False
        due = math.floor(self.requests * rate)
        if due > self._errors:
            self._errors = due
            return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {"x-instance": self.instance}
        if request.path == self.health_path:
            self.health_checks += 1
            if self.switches.health == "hang":
                await self._closing.wait()
            status = 200 if self.switches.health == "ok" else 503
            return web.Response(status=status, text=self.switches.health, headers=headers)
        await request.read()
        self.requests += 1
        self.by_method[request.method] += 1
        n = self.requests
        if self.switches.delay:
            await asyncio.sleep(self.switches.delay)
        status = self.switches.error_status if self._should_fail(request.method) else 200
        body = {"instance": self.instance, "method": request.method, "path": request.path_qs, "n": n,
                "headers": {k.lower(): v for k, v in request.headers.items()}}
        return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)
