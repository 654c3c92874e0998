"""A real control plane process, real agents with real Envoys, and tiny apps, all on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from testlib import PY, ControlPlaneProc, EchoApp, HttpApp, clean_env, free_port, wait_for


class Agent:
    def __init__(self, proc: subprocess.Popen[str], readiness_port: int, log: Path) -> None:
        self.proc, self.readiness_port, self.log = proc, readiness_port, log

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: self.proc.poll() is None and self.ready(), timeout, what=f"agent ready (log: {self.log})")

    def envoy_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "envoy"]
        except psutil.NoSuchProcess:
            return []

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def cp_env() -> dict[str, str]:
    """Extra environment of the module's control plane; a module overrides it (e.g. KUMA_STORE_* for PostgreSQL)."""
    return {}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, cp_env: dict[str, str]) -> Iterator[ControlPlaneProc]:
    c = ControlPlaneProc(tmp_path_factory.mktemp("cp") / "data", cp_env)
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def agents(cp: ControlPlaneProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("agents")
    started: list[Agent] = []

    def start(name: str, dataplane: str, token: str | None = None, *extra: str, wait: bool = True) -> Agent:
        dp = tmp / f"{name}.yaml"
        dp.write_text(dataplane)
        tok = tmp / f"{name}.token"
        tok.write_text(cp.token(name) if token is None else token)
        rport = free_port()
        log = tmp / f"{name}-{len(started)}.log"
        args = [PY, "-m", "dpagent", "run", "--cp-address", cp.url, "--ca-cert-file", str(cp.ca_file),
                "--dataplane-token-file", str(tok), "--readiness-port", str(rport), "--drain-time", "1s",
                "--cp-retry-backoff", "200ms", "--cp-retry-max-duration", "3s", "--envoy-log-level", "warning",
                *(["--dataplane-file", str(dp)] if dataplane else []), *extra]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True,  # noqa: SIM115
                                env=clean_env())
        agent = Agent(proc, rport, log)
        started.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    yield start
    for a in started:
        a.stop()


@pytest.fixture(scope="module")
def apps() -> dict[str, Any]:
    return {"backend": HttpApp("backend"), "echo": EchoApp()}
