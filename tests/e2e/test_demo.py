"""The README's main job (`dpagent demo`) end to end: a real CP, two agents with real Envoys, mTLS traffic.

Run as the README runs it, only on free ports and for a few seconds, so a change that breaks the first thing a
new user tries fails here rather than on their machine.
"""

from __future__ import annotations

import random
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
