"""A tiny HTTP/1.1 server on h11 for the agent's own endpoints (readiness, later metrics).

The agent process must stay small (DESIGN §4: aiohttp alone costs ~11 MB RSS), and these endpoints serve a
handful of GETs, so one request per connection over h11 is all that is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable

import h11

from dpagent.errors import PortInUseError

log = logging.getLogger("dpagent.http")

Response = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, str], Awaitable[Response]]  # (method, target) -> response
_MAX_REQUEST = 16 * 1024


class SmallHttpServer:
    def __init__(self, handler: Handler, host: str, port: int, *, what: str, flag: str, uds: str = "") -> None:
        """`uds`: serve on that Unix socket instead of host:port (the metrics hijacker Envoy forwards scrapes to)."""
        self.handler = handler
        self.uds = uds
        self.host = host
        self.port = port
        self.what = what
        self.flag = flag
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uds)  # a stale socket from a killed agent
            self._server = await asyncio.start_unix_server(self._serve, self.uds)
            os.chmod(self.uds, 0o600)
            return
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(self.what, self.host, self.port, self.flag) from None
            raise
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await asyncio.wait_for(self._read_request(conn, reader), 5.0)
            if request is None:
                return
            status, headers, body = await self.handler(request.method.decode(), request.target.decode())
            hdrs = [("content-length", str(len(body))), ("connection", "close"), *headers.items()]
            writer.write(conn.send(h11.Response(status_code=status, headers=hdrs)))
            if request.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (TimeoutError, ConnectionError, h11.RemoteProtocolError):
            pass
        except Exception:
            log.exception("internal error serving %s", self.what)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(4096)
                received += len(data)
                if received > _MAX_REQUEST:
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
