"""Shared set-up for mesh benchmarks: a real `dpagent cp run`, real `dpagent run` agents (with their Envoys) and a
process registry that tears every child down in reverse order, also on Ctrl-C or SIGTERM.

Same approach as tests/e2e/conftest.py, without pytest, so bench scripts can run from a shell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testlib import LocalControlPlane, free_port, wait_for  # noqa: E402

PY = sys.executable


def clean_env() -> dict[str, str]:
    """Agents and the CP read KUMA_*/DPAGENT_* settings: a developer's shell must not change what we measure."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}


class Procs:
    """Every process a bench starts, stopped newest first.

    Children get their own session so a terminal Ctrl-C reaches only the bench, which then stops them in order
    (agents first get two SIGTERMs: skip the drain wait). Whole process trees are killed as a last resort, so an
    Envoy never outlives its agent.
    """

    def __init__(self) -> None:
        self._procs: list[tuple[subprocess.Popen[bytes], int]] = []
        self._logs: list[IO[bytes]] = []

    def spawn(self, cmd: list[str], log: Path | None = None, *, terms: int = 1,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        out: int | IO[bytes] = subprocess.DEVNULL
        if log is not None:
            f = open(log, "wb")  # noqa: SIM115 - closed in stop_all
            self._logs.append(f)
            out = f
        proc = subprocess.Popen(cmd, stdout=out if stdout is None else stdout, stderr=out, env=clean_env(),
                                start_new_session=True)
        self._procs.append((proc, terms))
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs = [(p, t) for p, t in self._procs if p is not proc]

    @staticmethod
    def _tree(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, proc: subprocess.Popen[bytes], terms: int = 1, grace: float = 10.0) -> None:
        kids = self._tree(proc.pid)
        if proc.poll() is None:
            for _ in range(terms):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for k in kids:  # only the ones that were ours, by pid, and only if still alive
            with contextlib.suppress(psutil.NoSuchProcess):
                if k.is_running():
                    k.kill()

    def stop_all(self) -> None:
        for proc, terms in reversed(self._procs):
            self.stop(proc, terms)
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()


@contextlib.contextmanager
def interrupt_safe(procs: Procs) -> Iterator[Procs]:
    """SIGTERM/SIGHUP behave like Ctrl-C, and a second Ctrl-C cannot cut the clean-up short."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield procs
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop_all()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for s, h in old.items():
                signal.signal(s, h)


class ControlPlane(LocalControlPlane):
    """`dpagent cp run` on loopback with its own data dir; the default mesh has builtin mTLS and allow-all MTP."""

    def __init__(self, procs: Procs, tmp: Path) -> None:
        super().__init__(tmp / "cp-data")
        self.procs, self.tmp = procs, tmp

    def start(self) -> None:
        self.proc = self.procs.spawn(self.command(PY), self.tmp / "cp.log", terms=1)
        wait_for(lambda: self.proc.poll() is None and httpx.get(self.api, timeout=1).status_code == 200, 30,
                 what=f"control plane API (log: {self.tmp / 'cp.log'})")

    def token(self, name: str, mesh: str = "default") -> str:
        out = subprocess.run([PY, "-m", "dpagent", "token", "generate", "--name", name, "--mesh", mesh,
                              "--valid-for", "2h", "--api-address", self.api],
                             capture_output=True, text=True, env=clean_env(), timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"token generate failed: {out.stderr}")
        return out.stdout.strip()


class AgentProc:
    """One `dpagent run` with a fixed work dir, so the bench can reach its Envoy's admin socket."""

    def __init__(self, cp: ControlPlane, name: str, dataplane: str, *extra: str) -> None:
        self.name = name
        self.work_dir = cp.tmp / f"{name}-work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        dp = cp.tmp / f"{name}.yaml"
        dp.write_text(dataplane)
        tok = cp.tmp / f"{name}.token"
        tok.write_text(cp.token(name))
        tok.chmod(0o600)
        self.readiness_port = free_port()
        self.log = cp.tmp / f"{name}.log"
        self.proc = cp.procs.spawn(
            [PY, "-m", "dpagent", "run", "--cp-address", cp.url, "--ca-cert-file", str(cp.ca_file),
             "--dataplane-token-file", str(tok), "--dataplane-file", str(dp), "--readiness-port",
             str(self.readiness_port), "--work-dir", str(self.work_dir), "--drain-time", "1s",
             "--envoy-log-level", "warning", *extra],
            self.log, terms=2)

    def envoy_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "envoy"]
        except psutil.NoSuchProcess:
            return []

    @property
    def admin_socket(self) -> Path:
        return self.work_dir / "envoy-admin.sock"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited {self.proc.returncode}; log: {self.log}")
            return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2).status_code == 200

        wait_for(ready, timeout, what=f"agent {self.name} ready (log: {self.log})")


def admin_get(socket_path: Path, path: str, timeout: float = 5.0) -> httpx.Response:
    """Envoy admin over its Unix socket (the agent's default, and what the bench's own Envoys use too)."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://admin") as c:
        return c.get(path, timeout=timeout)


class CpuMeter:
    """CPU used by processes that are not ours (other users of a shared machine) since creation, in cores.

    Ours is this process and its descendants, live (psutil) or already reaped (os.times children fields).
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.ours0 = self._ours()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _ours() -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = p.cpu_times()
                total += c.user + c.system
        return total

    def foreign_cores(self) -> float:
        wall = max(1e-9, time.monotonic() - self.t0)
        return max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0)) / wall
