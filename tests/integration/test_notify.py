"""sd_notify from a real agent run: captured on a real AF_UNIX datagram socket set as NOTIFY_SOCKET.

The agent runs the real Envoy against the test bootstrap server; the order of READY, WATCHDOG and STOPPING is
checked against what the readiness endpoint says at the moment each message arrives.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from testlib import wait_for

pytestmark = [pytest.mark.envoy]


class NotifySocket:
    """A service manager's end of the protocol: records (time, message, /ready status at arrival)."""

    def __init__(self, address: str | bytes, readiness_port: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.readiness_port = readiness_port
        self.messages: list[tuple[float, str, int]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _ready_code(self) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=1).status_code
        except httpx.HTTPError:
            return 0

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            msg = data.decode()
            code = self._ready_code() if ("READY=1" in msg or "STOPPING=1" in msg) else -1
            self.messages.append((time.monotonic(), msg, code))

    def lines(self) -> list[str]:
        return [line for _, m, _ in self.messages for line in m.split("\n")]

    def first(self, line: str) -> tuple[float, str, int]:
        return next(m for m in self.messages if line in m[1].split("\n"))

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def _run_agent(launch, address: str, readiness_port: int, env_socket: str) -> NotifySocket:
    listener = NotifySocket(address, readiness_port)
    agent = launch("web-1", readiness_port=readiness_port,
                   env={"NOTIFY_SOCKET": env_socket, "WATCHDOG_USEC": "400000"})
    try:
        wait_for(lambda: "READY=1" in listener.lines(), 20, what="READY=1")
        time.sleep(1.0)  # a few watchdog ticks at 0.2s while ready
        agent.signal(signal.SIGTERM)
        code, err = agent.finish(30)
        assert code == 0, err
        assert "draining" in err
    finally:
        listener.close()
    return listener


def _check_sequence(n: NotifySocket) -> None:
    lines = n.lines()
    statuses = [line[7:] for line in lines if line.startswith("STATUS=")]
    assert statuses[0] == "checking the configuration"
    assert any(s.startswith("bootstrapping from the control plane at https://localhost:") for s in statuses)
    assert "obtaining the identity certificate" in statuses
    assert any(s.startswith("Envoy started (pid ") for s in statuses)
    # READY=1 only once Envoy is ready: /ready already answers 200 when the message arrives
    t_ready, msg, code = n.first("READY=1")
    assert code == 200, msg
    assert "STATUS=ready: Envoy pid " in msg
    # WATCHDOG=1 every ~0.2s (half of WATCHDOG_USEC); at least 4 while the agent was up and ready
    pings = [t for t, m, _ in n.messages if m == "WATCHDOG=1"]
    after_ready = [t for t in pings if t > t_ready]
    assert len(after_ready) >= 4, pings
    gaps = [b - a for a, b in itertools.pairwise(after_ready)]
    assert max(gaps) < 0.4, gaps  # never as late as the watchdog timeout itself
    # STOPPING=1 with the stop timeout stretched over drain (2s) + stop grace (5s) + 10s, readiness already 503
    t_stop, msg, code = n.first("STOPPING=1")
    assert t_stop > t_ready
    assert "EXTEND_TIMEOUT_USEC=17000000" in msg.split("\n")
    assert "STATUS=draining for 2s before stopping Envoy" in msg.split("\n")
    assert code == 503
    assert statuses[-1] == "Envoy stopped; exiting"


def test_notify_sequence_on_a_path_socket(launch, tmp_path: Path) -> None:
    from testlib import free_port

    path = str(tmp_path / "notify.sock")
    _check_sequence(_run_agent(launch, path, free_port(), path))


def test_notify_sequence_on_an_abstract_socket(launch) -> None:
    from testlib import free_port

    name = f"dpagent-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    n = _run_agent(launch, "\0" + name, free_port(), "@" + name)
    assert "READY=1" in n.lines()
    assert "STOPPING=1" in n.lines()


def test_no_notify_socket_means_no_messages(launch) -> None:
    """Without NOTIFY_SOCKET the agent runs exactly as before (no errors, no warnings about systemd)."""
    agent = launch("web-1")
    agent.wait_ready()
    agent.signal(signal.SIGTERM)
    code, err = agent.finish(30)
    assert code == 0
    assert "notify" not in err.lower()
