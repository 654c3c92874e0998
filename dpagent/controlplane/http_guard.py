"""Front-door hygiene for the CP's HTTP servers: a connection cap, read deadlines, and quiet client errors.

A client that opens connections and never finishes a request (slowloris) must not lock real agents out, and a
flood of broken requests must not flood the log: half-sent or idle connections are closed after the read timeout,
the oldest idle one makes room when the cap is reached, and such events are logged once per interval with a count.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError

from dpagent.log import kv

log = logging.getLogger("dpagent.cp.http")

# What a client can do to a request by itself: cut the connection, send a malformed or oversized message.
CLIENT_FAULTS: tuple[type[BaseException], ...] = (ConnectionError, ClientError, HttpProcessingError)


class EventLog:
    """Logs each kind of event at most once per `interval`, with how many happened since the last line."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._pending: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self.total: dict[str, int] = {}

    def note(self, event: str, **context: Any) -> None:
        self.total[event] = self.total.get(event, 0) + 1
        self._pending[event] = self._pending.get(event, 0) + 1
        now = self.clock()
        if now - self._last.get(event, -self.interval) >= self.interval:
            self._last[event] = now
            kv(self.logger, logging.WARNING, event, count=self._pending.pop(event), per=f"{self.interval:g}s",
               **context)


class _QuietClientFaults(logging.Filter):
    """aiohttp logs a traceback per malformed request or dropped client; count those instead."""

    def __init__(self, events: EventLog) -> None:
        super().__init__()
        self.events = events

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_FAULTS):
            self.events.note("dropped malformed or interrupted HTTP requests", error=type(exc).__name__)
            return False
        return True


_QUIET = _QuietClientFaults(EventLog(log))


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Guard:
    """One per server: its event log, read timeout and the set of connections that are inside a handler."""

    def __init__(self, what: str, *, max_connections: int, read_timeout: float) -> None:
        self.what = what
        self.read_timeout = read_timeout
        self.max_connections = _cap(max_connections)
        self.events = EventLog(log)
        self._handshaking: dict[Any, float] = {}  # handler → deadline: accepted, no connection_made yet
        self._busy: set[Any] = set()  # removed in the middleware's finally, so it cannot leak
        server_log = logging.getLogger("aiohttp.server")
        if _QUIET not in server_log.filters:
            server_log.addFilter(_QUIET)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Marks the connection busy (never evicted) while its request is handled."""
        proto = request.protocol
        self._busy.add(proto)
        try:
            return await handler(request)
        finally:
            self._busy.discard(proto)

    async def read_body(self, request: web.Request, limit: int) -> bytes:
        """The whole body, within the read timeout and `limit` bytes; BodyError says what went wrong."""
        if (request.content_length or 0) > limit:
            raise BodyError(413, f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout):
                while chunk := await request.content.read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise BodyError(413, f"request body larger than {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            self.events.note(f"{self.what}: closed requests whose body did not arrive in time")
            raise BodyError(408, f"request body not received within {self.read_timeout:g}s") from None
        except CLIENT_FAULTS as e:
            self.events.note(f"{self.what}: dropped requests whose client went away mid-body",
                             error=type(e).__name__)
            raise BodyError(400, "request body was cut short") from None
        return b"".join(chunks)

    def accept(self, server: web.Server) -> asyncio.BaseProtocol:
        """Protocol factory: at the cap, close the oldest connection not inside a handler, or refuse this one.

        Connections still in their TLS handshake count too (they hold a file descriptor); they are not in
        `server.connections` until the handshake is done, so they are remembered here until then or until the
        handshake deadline has passed.
        """
        now = time.monotonic()
        # Still in its handshake: no transport yet and not closed. aiohttp clears the transport of a closed
        # connection too (and its manager), so without the second check a connection opened and closed between two
        # accepts looked like one in its handshake until the deadline, and a burst of short requests hit the cap.
        self._handshaking = {h: t for h, t in self._handshaking.items()
                             if t > now and h.transport is None and getattr(h, "_manager", h) is not None}
        live = [h for h in server.connections if h.transport is not None and not h.transport.is_closing()]
        if len(live) + len(self._handshaking) >= self.max_connections:
            idle = next((h for h in live if h not in self._busy), None)
            if idle is None:
                self.events.note(f"{self.what}: refused connections, every slot is busy or in its TLS handshake",
                                 cap=self.max_connections)
                # asyncio drops (and so closes) the accepted socket when the factory raises, before any TLS work;
                # returning a protocol that closes itself would first hold the descriptor through a handshake.
                raise ConnectionRefusedError("connection cap reached")
            idle.force_close()
            self.events.note(f"{self.what}: at the connection cap, closed the oldest idle connection",
                             cap=self.max_connections)
        handler = server()
        self._handshaking[handler] = now + self.read_timeout + 1
        return handler


def _cap(configured: int) -> int:
    """Never more than half the open-file limit: the rest is for the store, ADS streams and outgoing work."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else max(16, min(configured, soft // 2))


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, with the guard as the protocol factory and a TLS handshake deadline."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: Guard, *,
                 ssl_context: ssl.SSLContext | None = None, shutdown_timeout: float = 2.0) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context)
        self._host, self._port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.guard.accept(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=True,
            ssl_handshake_timeout=self.guard.read_timeout if self._ssl_context else None)
