"""The readiness endpoint's answers in each phase, over a real socket."""

from __future__ import annotations

import httpx

from dpagent.agent.http import SmallHttpServer
from dpagent.agent.readiness import Phase, Readiness


class FakeAdmin:
    def __init__(self, ok: bool, state: str) -> None:
        self.ok, self.state = ok, state

    async def ready(self) -> tuple[bool, str]:
        return self.ok, self.state


async def test_phases_over_http():
    r = Readiness()
    server = SmallHttpServer(r.handle, "127.0.0.1", 0, what="readiness", flag="--readiness-port")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient() as c:
            resp = await c.get(f"{base}/ready")
            assert (resp.status_code, resp.text) == (503, "NOT_READY: STARTING\n")
            assert resp.headers["cache-control"].startswith("no-cache")
            r.admin = FakeAdmin(False, "PRE_INITIALIZING")  # type: ignore[assignment]
            r.set(Phase.RUNNING)
            assert (await c.get(f"{base}/ready")).text == "NOT_READY: Envoy is PRE_INITIALIZING\n"
            r.admin = FakeAdmin(True, "LIVE")  # type: ignore[assignment]
            resp = await c.get(f"{base}/ready")
            assert (resp.status_code, resp.text) == (200, "READY\n")
            r.set(Phase.ENVOY_RESTARTING, "exit code 1")
            assert (await c.get(f"{base}/ready")).text == "NOT_READY: ENVOY_RESTARTING (exit code 1)\n"
            r.set(Phase.TERMINATING)
            resp = await c.get(f"{base}/ready")
            assert (resp.status_code, resp.text) == (503, "TERMINATING\n")
            assert (await c.get(f"{base}/config_dump")).status_code == 404
            assert (await c.post(f"{base}/ready")).status_code == 405
    finally:
        await server.close()
