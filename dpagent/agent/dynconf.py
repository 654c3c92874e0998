"""Polls one path of the dynconf socket (Envoy serves the CP's direct responses there) with ETag/304, and hands each
new body to a callback; a 404 means "not configured" and is handed on as None.

The poll runs every second for the agent's whole life, so it is kept cheap: one kept-alive connection spoken
with h11 directly (an httpx request per second cost ~0.2 % of a core, twice the agent's idle budget). The socket
only exists once Envoy has the listener and disappears while Envoy restarts: both are normal, so failures are
logged at debug level and the last good conf stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import h11

from dpagent.log import kv

log = logging.getLogger("dpagent.dynconf")

DYNCONF_SOCKET = "dpagent-dynconf.sock"  # relative to the work dir (the CP's names.DYNCONF_SOCKET)
IDENTITY_PATH = "/identity"  # the CP's names.DYNCONF_IDENTITY_PATH: the mesh has mTLS on
TIMEOUT = 5.0
MAX_BODY = 16 * 1024 * 1024


class DynconfError(Exception):
    pass


class UdsHttpClient:
    """GETs over one Unix-socket connection, reopened when the server closes it."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None = None

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        try:
            return await asyncio.wait_for(self._get(path, headers), TIMEOUT)
        except (OSError, TimeoutError, h11.ProtocolError, DynconfError) as e:
            await self.close()
            raise DynconfError(f"{type(e).__name__}: {e}") from None

    async def _get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self._conn is None:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            self._conn = (reader, writer, h11.Connection(h11.CLIENT))
        reader, writer, conn = self._conn
        req = h11.Request(method="GET", target=path, headers=[("host", "dynconf"), *headers.items()])
        writer.write(conn.send(req) + conn.send(h11.EndOfMessage()))
        await writer.drain()
        status, got, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data and conn.their_state is h11.SEND_RESPONSE:
                    raise DynconfError("connection closed before a response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise DynconfError("response too large")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise DynconfError("connection closed")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.close()
        return status, got, bytes(body)

    async def close(self) -> None:
        if self._conn is not None:
            writer = self._conn[1]
            self._conn = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class DynconfPoller:
    def __init__(self, socket_path: Path, path: str, apply: Callable[[bytes | None], None],
                 interval: float = 1.0) -> None:
        self.socket_path = socket_path
        self.path = path
        self.apply = apply
        self.interval = interval
        self.etag = ""
        self.configured = False

    async def fetch_once(self, client: UdsHttpClient) -> bool:
        """True when the conf changed (and was applied)."""
        status, headers, body = await client.get(self.path, {"if-none-match": self.etag} if self.etag else {})
        if status == 304:
            return False
        if status == 404:
            if not self.configured:
                return False
            self.apply(None)
            self.etag, self.configured = "", False
            return True
        if status != 200:
            return False
        self.apply(body)  # may raise: the ETag is only kept for a body that applied
        self.etag, self.configured = headers.get("etag", ""), True
        return True

    async def run(self) -> None:
        client = UdsHttpClient(self.socket_path)
        try:
            while True:
                if self.socket_path.exists():
                    try:
                        await self.fetch_once(client)
                    except (DynconfError, ValueError, KeyError, TypeError) as e:
                        kv(log, logging.DEBUG, "dynconf fetch failed; keeping the last conf", path=self.path,
                           reason=str(e))
                await asyncio.sleep(self.interval)
        finally:
            await client.close()
