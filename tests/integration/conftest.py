"""A small HTTPS bootstrap server and an agent launcher, so agent tests run the real Envoy without a real CP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from testlib import DATAPLANE_TEMPLATE, BootstrapServer, free_port, wait_for

DATAPLANE = DATAPLANE_TEMPLATE  # one agent-test Dataplane for every harness


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[BootstrapServer]:
    server = BootstrapServer(tmp_path)
    yield server
    server.close()


class AgentProc:
    def __init__(self, proc: subprocess.Popen[str], readiness_port: int, work_dir: Path | None) -> None:
        self.proc = proc
        self.readiness_port = readiness_port
        self.work_dir = work_dir

    def ready(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2)

    def wait_ready(self, timeout: float = 15) -> None:
        wait_for(lambda: self.proc.poll() is None and self.ready().status_code == 200, timeout, what="agent ready")

    def envoy_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "envoy"]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def launch(tmp_path: Path, cp: BootstrapServer) -> Iterator[Any]:
    procs: list[AgentProc] = []

    def start(name: str = "web-1", *extra: str, readiness_port: int | None = None, template: str = DATAPLANE,
              env: dict[str, str] | None = None, ca: bool = True) -> AgentProc:
        rport = readiness_port or free_port()
        dp_file = tmp_path / f"{name}.yaml"
        dp_file.write_text(template)
        token = tmp_path / f"{name}.token"
        token.write_text("test-token\n")
        args = [sys.executable, "-m", "dpagent", "run", "--cp-address", cp.url, "--dataplane-file", str(dp_file),
                "-v", f"name={name}", "-v", f"port={free_port()}", "--dataplane-token-file", str(token),
                "--readiness-port", str(rport), "--drain-time", "2s", "--envoy-log-level", "warning", *extra]
        if ca:
            args += ["--ca-cert-file", str(cp.ca_file)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
        full_env.update(env or {})
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        agent = AgentProc(proc, rport, None)
        procs.append(agent)
        return agent

    yield start
    for a in procs:
        for pid in a.envoy_pids():
            psutil.Process(pid).kill()
        if a.proc.poll() is None:
            a.proc.kill()
        a.proc.communicate()
