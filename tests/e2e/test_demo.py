"""The README's main job (`dpagent demo`) end to end: a real CP, two agents with real Envoys, mTLS traffic.

Run as the README runs it, only on free ports and for a few seconds, so a change that breaks the first thing a
new user tries fails here rather than on their machine.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys

import pytest
from testlib import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def test_demo_brings_up_an_mtls_mesh_and_stops_cleanly(tmp_path) -> None:
    base = random.randrange(30_000, 45_000, 100)  # the demo uses base+1 … base+22
    cmd = [sys.executable, "-m", "dpagent", "demo", "--base-port", str(base), "--api-port", str(free_port()),
           "--dp-server-port", str(free_port()), "--xds-port", str(free_port()), "--seconds", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "==> the mesh is up" in out.stdout
    assert "hello from backend" in out.stdout  # the answer really crossed both Envoys
    api = cmd[cmd.index("--api-port") + 1]
    assert f"http://127.0.0.1:{api}/gui" in out.stdout, "the demo points at the GUI"
    assert "Traceback" not in out.stdout + out.stderr
    # Setup noise stays in the logs: one progress line per step on the terminal.
    progress = [line for line in out.stdout.splitlines() if line.startswith("==> ")]
    assert len(progress) >= 5, out.stdout
    before_banner = out.stdout.split("\n\n", 1)[0].splitlines()
    assert before_banner == progress[:len(before_banner)], out.stdout  # nothing but progress until the mesh is up
    assert out.stderr == "", out.stderr


def test_a_failing_demo_step_shows_the_log_that_explains_it(tmp_path) -> None:
    """The control plane cannot take its xDS port: the demo stops at that step and prints the tail of the CP's
    log (the reason), not a traceback and not the whole log."""
    base = random.randrange(30_000, 45_000, 100)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        xds = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "dpagent", "demo", "--base-port", str(base), "--api-port", str(free_port()),
               "--dp-server-port", str(free_port()), "--xds-port", str(xds), "--seconds", "1"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [ln for ln in out.stdout.splitlines() if ln.startswith("==> ")], out.stdout
    assert "control plane exited early" in out.stderr and "cp.log ----" in out.stderr, out.stderr
    assert f"port {xds} on 127.0.0.1" in out.stderr and "already in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
