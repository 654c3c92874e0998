"""sd_notify without libsystemd: tell systemd when the agent is ready, what it is doing, that it is alive.

Why vendored: the protocol is one datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (a leading
'@' means Linux's abstract namespace); the PyPI packages for it are unmaintained or need C headers. Every send is
best-effort: a service manager that went away must never take the agent down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("dpagent.notify")

# Before READY, the start timeout is extended while the agent is healthy and within its own deadlines, so a slow
# bootstrap (the agent retries for KUMA_CONTROL_PLANE_RETRY_MAX_DURATION) is not killed by TimeoutStartSec.
IDLE_TICK = 5.0


class Notifier:
    """Sends sd_notify messages; a no-op when the process was not started by systemd with Type=notify."""

    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent: list[str] = []  # last messages, for diagnostics (bounded)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID the way sd_notify(3) and sd_watchdog_enabled(3) do."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        usec = 0
        try:
            usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        except ValueError:
            usec = 0
        wpid = env.get("WATCHDOG_PID", "")
        if wpid and wpid != str(os.getpid()):
            usec = 0  # the watchdog is meant for another process (we were forked or exec'd by it)
        return cls(address, max(0, usec))

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float:
        """Ping at half the watchdog timeout (sd_watchdog_enabled(3)'s advice); 0 when there is no watchdog."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else 0.0

    def _target(self) -> str | bytes:
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *lines: str) -> bool:
        """Send one datagram of newline-separated KEY=VALUE lines; returns whether it went out."""
        if not self.address or not lines:
            return False
        msg = "\n".join(lines)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode(), self._target())
        except OSError as e:
            if not self._warned:  # once: a broken socket would otherwise log on every watchdog tick
                log.warning("cannot notify the service manager at %s: %s", self.address, e.strerror or e)
                self._warned = True
            return False
        self.sent = [*self.sent[-31:], msg]
        return True

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, extend_seconds: float, status: str = "") -> bool:
        """STOPPING=1 plus an extension of the stop timeout long enough for the drain that follows."""
        return self.send("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(extend_seconds * 1e6)}",
                         *([f"STATUS={status}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


async def health_loop(notifier: Notifier, healthy: Callable[[], Awaitable[str]], *,
                      starting: Callable[[], bool], start_budget: float) -> None:
    """Ping WATCHDOG=1 only while the event loop is responsive and `healthy()` reports no problem in time.

    `healthy` returns "" when all is well, or the reason it is not. A hung event loop pings late or never, a
    check that hangs or fails pings never, so systemd's watchdog restarts an agent that is alive but stuck.
    While `starting()` is true, the start timeout is extended for up to `start_budget` seconds.
    """
    if not notifier.enabled:
        return
    tick = notifier.watchdog_interval or IDLE_TICK
    began = time.monotonic()
    last_reason = ""
    while True:
        before = time.monotonic()
        await asyncio.sleep(tick)
        lag = time.monotonic() - before - tick
        try:
            reason = await asyncio.wait_for(healthy(), timeout=max(0.5, tick / 2))
        except TimeoutError:
            reason = "the health check did not finish in time"
        except Exception as e:  # a failing check is a finding, not a crash of the loop
            reason = f"the health check failed: {e!r}"
        if not reason and lag > tick / 2:
            reason = f"the event loop is {lag:.1f}s late"
        if reason:
            if reason != last_reason:
                log.warning("not pinging the systemd watchdog: %s", reason)
            last_reason = reason
            continue
        last_reason = ""
        if notifier.watchdog_interval:
            notifier.watchdog()
        if starting() and time.monotonic() - began < start_budget:
            notifier.extend_timeout(tick * 3)
