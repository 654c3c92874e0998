"""`dpagent doctor` asks the CP about the dataplane named in the agent's config: that name stays in its URL segment
(issue 9, item 6 — every path segment escaped), whatever a hand-edited config holds."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from dpagent.doctor import Context, check_xds


async def test_the_xds_check_escapes_the_dataplane_name():
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app) as server:
        ctx: Any = Context(cfg=None, api_address=str(server.make_url("")).rstrip("/"),  # type: ignore[arg-type]
                           name="../../../meshes/victim", mesh="default")
        check = await check_xds(ctx)
    assert seen == ["/meshes/default/dataplanes/..%2F..%2F..%2Fmeshes%2Fvictim/_inspect"], seen
    assert "does not know dataplane default/../../../meshes/victim" in check.detail
