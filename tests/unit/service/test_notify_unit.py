"""Notifier parsing and the watchdog health loop, on a real datagram socket but with fake health checks."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from dpagent.agent.notify import Notifier, health_loop


def _listener(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_from_env_reads_socket_and_watchdog() -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_interval == 15.0
    assert Notifier.from_env({}).enabled is False
    assert Notifier.from_env({"WATCHDOG_USEC": "1000"}).watchdog_interval == 0  # no socket, no watchdog
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "junk"}).watchdog_interval == 0


def test_watchdog_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(env).watchdog_interval == 0
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_env(env).watchdog_interval == 0.5


def test_messages_on_a_path_socket(tmp_path: Path) -> None:
    s = _listener(tmp_path / "n.sock")
    n = Notifier(str(tmp_path / "n.sock"))
    assert n.ready("up") and n.status("x") and n.watchdog() and n.stopping(17, "bye") and n.extend_timeout(1.5)
    assert _drain(s) == ["READY=1\nSTATUS=up", "STATUS=x", "WATCHDOG=1",
                         "STOPPING=1\nEXTEND_TIMEOUT_USEC=17000000\nSTATUS=bye", "EXTEND_TIMEOUT_USEC=1500000"]
    n.close()
    s.close()


def test_abstract_namespace_address() -> None:
    name = f"dpagent-unit-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    n = Notifier("@" + name)
    assert n.ready()
    assert s.recv(100) == b"READY=1"
    s.close()


def test_unset_socket_is_a_noop_and_a_dead_socket_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert Notifier("").ready() is False
    n = Notifier(str(tmp_path / "gone.sock"))
    assert n.watchdog() is False and n.watchdog() is False
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1


async def test_health_loop_pings_only_while_healthy(tmp_path: Path) -> None:
    s = _listener(tmp_path / "n.sock")
    n = Notifier(str(tmp_path / "n.sock"), watchdog_usec=100_000)  # ping every 50 ms
    state = {"reason": ""}

    async def healthy() -> str:
        return state["reason"]

    task = asyncio.create_task(health_loop(n, healthy, starting=lambda: False, start_budget=0))
    await asyncio.sleep(0.3)
    healthy_msgs = _drain(s)
    state["reason"] = "Envoy's admin API does not answer"
    await asyncio.sleep(0.06)
    _drain(s)
    await asyncio.sleep(0.3)
    sick_msgs = _drain(s)
    task.cancel()
    assert healthy_msgs.count("WATCHDOG=1") >= 3
    assert sick_msgs == []
    s.close()


async def test_health_loop_hung_check_means_no_ping_and_start_is_extended(tmp_path: Path) -> None:
    s = _listener(tmp_path / "n.sock")
    n = Notifier(str(tmp_path / "n.sock"), watchdog_usec=100_000)
    hang = asyncio.Event()

    async def healthy() -> str:
        if hang.is_set():
            await asyncio.sleep(10)
        return ""

    task = asyncio.create_task(health_loop(n, healthy, starting=lambda: True, start_budget=60))
    await asyncio.sleep(0.2)
    msgs = _drain(s)
    assert "WATCHDOG=1" in msgs and "EXTEND_TIMEOUT_USEC=150000" in msgs
    hang.set()
    await asyncio.sleep(0.06)
    _drain(s)
    await asyncio.sleep(0.3)
    assert _drain(s) == []
    task.cancel()
    s.close()
