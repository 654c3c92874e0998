"""Access-log streamer for MeshAccessLog's Tcp backend: read the lines Envoy writes into a FIFO in the work dir and
forward each message, newline-terminated, to its collector over one TCP connection per collector.

Why a FIFO: Envoy's only local sink is a file access log, which open()s and write()s its path; open() on a Unix
socket fails, a FIFO works. The agent opens the FIFO read-write, so it always holds a writer end itself: it never
sees EOF when Envoy restarts, and Envoy's write-only open() never blocks waiting for a reader.

A slow or absent collector must not back up into Envoy (its log-flush thread would block on a full pipe), so the
reader never waits for the network: each collector has a bounded queue, and lines beyond it are dropped and
counted (`dpagent_access_log_dropped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from dpagent.log import kv
from dpagent.model.accesslog import FIFO_NAME, decode

log = logging.getLogger("dpagent.accesslogs")

QUEUE_LIMIT = 10_000  # lines per collector held while it is slow or down
LINE_LIMIT = 1 << 20  # a longer line is dropped (Envoy writes one entry per line)
CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 5.0


@dataclass
class Stats:
    lines: int = 0
    sent: int = 0
    dropped: int = 0
    unparsable: int = 0
    connect_failures: int = 0


async def supervised(name: str, run: Callable[[], Awaitable[None]], backoff: float = 0.5) -> None:
    """Run `run` forever: an unexpected death is logged and the loop restarted after a pause, never lost."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            kv(log, logging.ERROR, "access-log task died; restarting", task=name, error=repr(e),
               restart_in=f"{backoff:g}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


class _Collector:
    """One TCP connection to one collector, fed by a bounded queue."""

    def __init__(self, address: str, stats: Stats) -> None:
        self.address = address
        self.stats = stats
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.task = asyncio.create_task(supervised(f"collector {address}", self._run), name=f"access-log:{address}")

    def offer(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.stats.dropped += 1

    async def _connect(self) -> asyncio.StreamWriter:
        backoff = 0.2
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT)
                kv(log, logging.INFO, "connected to access-log collector", address=self.address)
                return writer
            except (OSError, TimeoutError) as e:
                self.stats.connect_failures += 1
                kv(log, logging.WARNING, "cannot reach access-log collector; retrying", address=self.address,
                   error=str(e) or type(e).__name__, retry_in=f"{backoff:g}s")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        pending: bytes | None = None
        try:
            while True:
                data = pending if pending is not None else await self.queue.get()
                pending = data
                if writer is None:
                    writer = await self._connect()
                batch = [data]
                while not self.queue.empty() and len(batch) < 512:
                    batch.append(self.queue.get_nowait())
                try:
                    writer.write(b"".join(batch))
                    await writer.drain()
                except OSError as e:
                    kv(log, logging.WARNING, "access-log collector connection lost", address=self.address,
                       error=str(e))
                    writer.close()
                    writer = None
                    self.stats.dropped += len(batch) - 1  # the first is retried on the next connection
                    continue
                self.stats.sent += len(batch)
                pending = None
        finally:
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class AccessLogStreamer:
    """Owns `<work dir>/dpagent-access-log.fifo` (model/accesslog.py is the contract with the CP)."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / FIFO_NAME
        self.stats = Stats()
        self._collectors: dict[str, _Collector] = {}
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "mkfifo")

    def _make_fifo(self) -> None:
        """A stale FIFO or file from an earlier run is replaced: Envoy must find an empty pipe we read."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(self.path.lstat().st_mode):
                self.path.unlink()
        if not self.path.exists():
            os.mkfifo(self.path, 0o600)  # Envoy runs as the agent's user; nobody else may inject lines

    async def start(self) -> None:
        if not self.supported():
            log.warning("this platform has no FIFOs: MeshAccessLog Tcp backends are not forwarded")
            return
        self._make_fifo()
        # Opened here, not in the task: once start() returns, Envoy's write-only open() finds a reader.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self._task = asyncio.create_task(supervised("fifo reader", self._read), name="access-log-reader")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        fd, self._fd = self._fd, None
        if fd is None:  # a restart after a failure: the transport closed the previous descriptor
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        pipe = os.fdopen(fd, "rb", buffering=0)
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # longer than LINE_LIMIT: that line is discarded
                    self.stats.unparsable += 1
                    continue
                if not raw:
                    raise RuntimeError("the access-log FIFO closed")
                self._dispatch(raw)
        finally:
            transport.close()

    def _dispatch(self, raw: bytes) -> None:
        self.stats.lines += 1
        line = decode(raw)
        if line is None or not line.address.rpartition(":")[2].isdigit():
            self.stats.unparsable += 1
            return
        collector = self._collectors.get(line.address)
        if collector is None:
            collector = self._collectors[line.address] = _Collector(line.address, self.stats)
        collector.offer(line.message.encode() + b"\n")

    def metrics(self) -> dict[str, tuple[str, float]]:
        s = self.stats
        return {"dpagent_access_log_lines_total": ("counter", s.lines),
                "dpagent_access_log_sent_total": ("counter", s.sent),
                "dpagent_access_log_dropped_total": ("counter", s.dropped),
                "dpagent_access_log_unparsable_total": ("counter", s.unparsable),
                "dpagent_access_log_connect_failures_total": ("counter", s.connect_failures),
                "dpagent_access_log_collectors": ("gauge", len(self._collectors))}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for c in self._collectors.values():
            await c.close()
        if self._fd is not None:
            os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
