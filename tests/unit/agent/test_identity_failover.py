"""Certificate renewals go to a live replica: a dead one is skipped, and the one that answered is asked first."""

from __future__ import annotations

import asyncio
import json

import pytest
from testlib import free_port

from dpagent.agent.identity import IdentityClient


async def _serve(code: int, hits: list[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")),
                          b"0"))
        await reader.readexactly(length)
        hits.append(str(code))
        text = json.dumps({"certificate": "C", "caBundle": "B"})
        writer.write(f"HTTP/1.1 {code} X\r\ncontent-length: {len(text)}\r\nconnection: close\r\n\r\n{text}".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("first", ["dead", "failing"])
async def test_renewal_fails_over_to_a_live_replica(first: str) -> None:
    hits: list[str] = []
    live = await _serve(200, hits)
    failing = await _serve(503, hits)
    bad = f"http://127.0.0.1:{free_port()}" if first == "dead" else \
        f"http://127.0.0.1:{failing.sockets[0].getsockname()[1]}"
    good = f"http://127.0.0.1:{live.sockets[0].getsockname()[1]}"
    client = IdentityClient((bad, good), False, lambda: "tok", "default", "web-1")
    async with live, failing:
        resp = await client._post({"csr": "x"}, {})
        assert resp.status_code == 200
        assert client.url == good + "/certificates", "the replica that answered is asked first next time"
        await client._post({"csr": "x"}, {})
    assert hits == (["200", "200"] if first == "dead" else ["503", "200", "200"])


async def test_doctor_warns_when_some_replicas_are_down_and_fails_when_all_are() -> None:
    from dpagent import doctor
    from dpagent.agent.settings import build_agent_config

    live = await _serve(200, [])
    up = f"http://127.0.0.1:{live.sockets[0].getsockname()[1]}"
    down = f"http://127.0.0.1:{free_port()}"

    async def check(*urls: str) -> doctor.Check:
        cfg, _ = build_agent_config({"name": "a", "mesh": "m", "cp_url": ",".join(urls)}, env={})
        return await doctor.check_control_plane(doctor.Context(cfg))

    async with live:
        assert (await check(up, up)).status == doctor.OK
        partly = await check(down, up)
        assert partly.status == doctor.WARN and "1 of 2 replicas reachable" in partly.detail
    assert (await check(down, down)).status == doctor.FAIL
