"""Shared set-up for agent benchmarks: a loopback bootstrap server and an agent launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testlib import BootstrapServer, free_port  # noqa: E402

DATAPLANE = """\
type: Dataplane
mesh: default
name: bench
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    servicePort: 9
    tags: {{kuma.io/service: web, kuma.io/protocol: http}}
"""


def agent_command(cp: BootstrapServer, tmp: Path, readiness_port: int) -> list[str]:
    dp = tmp / "dp.yaml"
    dp.write_text(DATAPLANE.format(port=free_port()))
    token = tmp / "token"
    token.write_text("bench-token")
    exe = Path(sys.executable).with_name("dpagent")
    return [str(exe), "run", "--cp-address", cp.url, "--ca-cert-file", str(cp.ca_file), "--dataplane-file", str(dp),
            "--dataplane-token-file", str(token), "--readiness-port", str(readiness_port), "--drain-time", "1s",
            "--envoy-log-level", "error", "--concurrency", "1"]


def start_cp() -> tuple[BootstrapServer, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="dpagent-bench-"))
    return BootstrapServer(tmp), tmp


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}


def popen(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
