"""The access-log streamer with a real FIFO and real TCP collectors: lines written the way Envoy writes them
(a write-only open of the path) reach the collector named in each line, newline-delimited; a writer that goes away
and comes back (an Envoy restart) is not the end of the stream; a collector that is down is retried; garbage and
overflow are counted, never fatal."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

from testlib import free_port

from dpagent.agent import accesslogs
from dpagent.agent.accesslogs import AccessLogStreamer


class Collector:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        while line := await r.readline():
            self.lines.append(line)
        w.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


def envoy_write(path: Path, *lines: str) -> None:
    """Envoy's file logger: open the path write-only (no O_NONBLOCK), append, close on restart."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode())
    finally:
        os.close(fd)


async def wait(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def line(port: int, message: object) -> str:
    return json.dumps({"address": f"127.0.0.1:{port}", "message": message})


async def test_lines_reach_their_collectors_across_writer_restarts(tmp_path: Path) -> None:
    a, b = Collector(), Collector()
    await a.start()
    await b.start()
    s = AccessLogStreamer(tmp_path)
    (tmp_path / "dpagent-access-log.fifo").write_text("stale regular file")
    await s.start()
    try:
        assert stat.S_ISFIFO(s.path.stat().st_mode) and stat.S_IMODE(s.path.stat().st_mode) == 0o600
        envoy_write(s.path, line(a.port, "GET / 200 web->backend"), line(b.port, {"status": 503}), "garbage")
        envoy_write(s.path, f"127.0.0.1:{a.port};legacy form")  # a second "Envoy" after the first closed
        await wait(lambda: len(a.lines) == 2 and len(b.lines) == 1)
        assert a.lines == [b"GET / 200 web->backend\n", b"legacy form\n"]
        assert b.lines == [b'{"status":503}\n']
        m = s.metrics()
        assert m["dpagent_access_log_lines_total"][1] == 4 and m["dpagent_access_log_unparsable_total"][1] == 1
        assert m["dpagent_access_log_sent_total"][1] == 3 and m["dpagent_access_log_collectors"][1] == 2
    finally:
        await s.close()
        await a.stop()
        await b.stop()
    assert not s.path.exists()


async def test_a_collector_that_comes_up_late_gets_the_queued_lines(tmp_path: Path) -> None:
    c = Collector()
    s = AccessLogStreamer(tmp_path)
    await s.start()
    try:
        envoy_write(s.path, *(line(c.port, f"n={i}") for i in range(3)))
        await wait(lambda: s.stats.connect_failures >= 1)
        await c.start()
        await wait(lambda: len(c.lines) == 3, timeout=10)
        assert c.lines == [f"n={i}\n".encode() for i in range(3)]
    finally:
        await s.close()
        await c.stop()


async def test_overflow_is_dropped_and_counted_not_blocking(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(accesslogs, "QUEUE_LIMIT", 5)
    port = free_port()  # nobody listens: every line waits in the queue
    s = AccessLogStreamer(tmp_path)
    await s.start()
    try:
        envoy_write(s.path, *(line(port, f"n={i}") for i in range(50)))
        await wait(lambda: s.stats.lines == 50)
        # one is held by the sender while it retries, five wait in the queue, the rest are dropped
        assert 44 <= s.stats.dropped <= 45
    finally:
        await s.close()
