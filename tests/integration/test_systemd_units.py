"""The unit files: `systemd-analyze verify` is clean, the security exposure stays low, and the settings that
make drain and readiness work are there. Also: the agent's log lines suit the journal."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dpagent.install import find_unit_templates, render_unit

UNITS = ("dpagent@.service", "dpagent-cp.service", "dpagent-tproxy.service")
# Exposure ceilings (systemd-analyze security, 0 = locked down, 10 = exposed); systemd/README.md has the values.
MAX_EXPOSURE = {"dpagent@web-1.service": 2.0, "dpagent-cp.service": 2.0, "dpagent-tproxy.service": 5.0}

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (apt-get install systemd)")


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The units as `dpagent install` writes them, pointing at this checkout's dpagent and a stand-in
    transparent-proxy (verify insists that ExecStart binaries exist)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("dpagent", path=str(Path(os.sys.executable).parent)) or shutil.which("dpagent")
    assert real, "dpagent console script not found"
    (bin_dir / "dpagent").symlink_to(real)
    tp = bin_dir / "transparent-proxy"
    tp.write_text("#!/bin/sh\nexit 0\n")
    tp.chmod(0o755)
    src = find_unit_templates()
    for u in UNITS:
        (tmp_path / u).write_text(render_unit((src / u).read_text(), str(bin_dir)))
    (tmp_path / "dpagent@web-1.service").symlink_to("dpagent@.service")
    return tmp_path


@needs_analyze
def test_every_unit_verifies_cleanly(rendered: Path) -> None:
    units = ["./dpagent@web-1.service", "./dpagent-cp.service", "./dpagent-tproxy.service"]
    out = subprocess.run(["systemd-analyze", "verify", *units], cwd=rendered, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    # verify only warns (exit 0) about unknown keys or bad values: any output is a finding
    assert out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr + out.stdout


@needs_analyze
@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_security_exposure(rendered: Path, unit: str) -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", f"./{unit}"], cwd=rendered,
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE[unit], out.stdout


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_agent_unit_contract() -> None:
    s = _settings((find_unit_templates() / "dpagent@.service").read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["KillMode"] == ["mixed"]  # SIGTERM to the agent only: Envoy is drained, not killed first
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["dpagent"]
    assert s["CapabilityBoundingSet"] == [""]
    assert "/etc/dpagent/%i/config.yaml" in s["ExecStart"][0]
    assert s["EnvironmentFile"] == ["-/etc/dpagent/%i/env"]
    assert s["StateDirectory"] == ["dpagent/%i"]
    stop = int(s["TimeoutStopSec"][0].rstrip("s"))
    assert stop >= 30 + 5  # default drain time + Envoy's stop grace
    assert int(s["WatchdogSec"][0].rstrip("s")) >= 10
    assert "dpagent-tproxy.service" in s["After"][0]


def test_tproxy_unit_contract() -> None:
    s = _settings((find_unit_templates() / "dpagent-tproxy.service").read_text())
    assert s["Type"] == ["oneshot"] and s["RemainAfterExit"] == ["yes"]
    assert s["ExecStart"] == ["/opt/dpagent/bin/transparent-proxy install --config /etc/dpagent/tproxy.yaml"]
    assert s["ExecStop"] == ["/opt/dpagent/bin/transparent-proxy uninstall"]
    assert "User" not in s  # root: it changes the firewall


def test_log_lines_have_no_timestamp_under_the_journal(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """journald stamps every line itself; a second timestamp from us would only be noise."""
    from dpagent import log

    monkeypatch.setattr(log, "_CONTEXT", {})  # other in-process agent runs leave proxy=/mesh= behind
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    log.setup("info", "text")
    log.kv(logging.getLogger("dpagent.agent"), logging.INFO, "Envoy is ready", pid=42)
    line = capsys.readouterr().err.strip()
    assert line == "info  dpagent.agent: Envoy is ready pid=42"
    monkeypatch.delenv("JOURNAL_STREAM")
    log.setup("info", "text")
    log.kv(logging.getLogger("dpagent.agent"), logging.INFO, "Envoy is ready", pid=42)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  dpagent.agent: Envoy is ready pid=42$",
                    capsys.readouterr().err.strip())
