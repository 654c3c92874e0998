"""Polls one path of the dynconf socket (Envoy serves the CP's direct responses there) with ETag/304, and hands each
new body to a callback; a 404 means "not configured" and is handed on as None.

The socket only exists once Envoy has the listener, and disappears while Envoy restarts: both are normal, so
failures are logged at debug level and the last good conf stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from dpagent.log import kv

log = logging.getLogger("dpagent.dynconf")

DYNCONF_SOCKET = "dpagent-dynconf.sock"  # relative to the work dir (the CP's names.DYNCONF_SOCKET)


class DynconfPoller:
    def __init__(self, socket_path: Path, path: str, apply: Callable[[bytes | None], None],
                 interval: float = 1.0) -> None:
        self.socket_path = socket_path
        self.path = path
        self.apply = apply
        self.interval = interval
        self.etag = ""
        self.configured = False

    async def fetch_once(self, client: httpx.AsyncClient) -> bool:
        """True when the conf changed (and was applied)."""
        headers = {"if-none-match": self.etag} if self.etag else {}
        resp = await client.get(self.path, headers=headers)
        if resp.status_code == 304:
            return False
        if resp.status_code == 404:
            if not self.configured:
                return False
            self.apply(None)
            self.etag, self.configured = "", False
            return True
        if resp.status_code != 200:
            return False
        self.apply(resp.content)  # may raise: the ETag is only kept for a body that applied
        self.etag, self.configured = resp.headers.get("etag", ""), True
        return True

    async def run(self) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path), verify=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://dynconf", timeout=5,
                                     trust_env=False) as client:
            while True:
                if self.socket_path.exists():
                    try:
                        await self.fetch_once(client)
                    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                        kv(log, logging.DEBUG, "dynconf fetch failed; keeping the last conf", path=self.path,
                           reason=str(e))
                await asyncio.sleep(self.interval)
