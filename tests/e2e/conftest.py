"""A real control plane process, real agents with real Envoys, and tiny apps, all on 127.0.0.1."""

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
from testlib import EchoApp, HttpApp, LocalControlPlane, free_port, wait_for

PY = sys.executable


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}


class ControlPlaneProc(LocalControlPlane):
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir)
        self.env = env or {}  # e.g. KUMA_STORE_* for a CP on PostgreSQL
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / "cp.log"

    def start(self) -> None:
        logf = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(PY, "--token-recheck-interval", "1s", "--deregistration-delay", "1s"),
            stdout=logf, stderr=subprocess.STDOUT, text=True, env={**clean_env(), **self.env})
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 20, what="control plane API")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([PY, "-m", "dpagent", *args, "--api-address", self.api], input=input,
                             capture_output=True, text=True, env=clean_env(), timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"dpagent {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out

    def token(self, name: str, *extra: str, mesh: str = "default", valid_for: str = "1h") -> str:
        return self.cli("token", "generate", "--name", name, "--mesh", mesh, "--valid-for", valid_for,
                        *extra).stdout.strip()

    def inspect(self, name: str, mesh: str = "default") -> dict[str, Any]:
        return httpx.get(f"{self.api}/meshes/{mesh}/dataplanes/{name}/_inspect", timeout=5).json()


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
