"""`dpagent doctor` against a real control plane and agent (with Envoy), healthy and broken in each way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from e2e.conftest import ControlPlaneProc, clean_env
from testlib import DATAPLANE_TEMPLATE, free_port, make_ca_and_server_cert, wait_for

from dpagent.cli.doctor import doctor_cmd

pytestmark = [pytest.mark.envoy]

DATAPLANE = DATAPLANE_TEMPLATE  # one agent-test Dataplane for every harness
TPROXY = "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProc]:
    c = ControlPlaneProc(tmp_path_factory.mktemp("doctor-cp") / "data")
    c.start()
    yield c
    c.stop()


class Setup:
    def __init__(self, cp: ControlPlaneProc, tmp: Path) -> None:
        self.cp, self.tmp = cp, tmp
        self.dp = tmp / "dp.yaml"
        self.dp.write_text(DATAPLANE)
        self.token = tmp / "token"
        self.token.write_text(cp.token("web-1"))
        self.work = tmp / "work"
        self.rport, self.dns_port, self.inbound = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None

    def flags(self, **over: str) -> list[str]:
        f = {"--cp-address": self.cp.url, "--ca-cert-file": str(self.cp.ca_file),
             "--dataplane-token-file": str(self.token), "--dataplane-file": str(self.dp),
             "--readiness-port": str(self.rport), "--work-dir": str(self.work), "--dns-proxy-port": str(self.dns_port),
             "--api-address": self.cp.api, **over}
        return [x for k, v in f.items() for x in (k, v)] + ["-v", "name=web-1", "-v", f"port={self.inbound}"]

    def start_agent(self) -> None:
        args = [sys.executable, "-m", "dpagent", "run", *[a for a in self.flags() if a != "--api-address"
                                                          and a != self.cp.api], "--drain-time", "1s",
                "--envoy-log-level", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.tmp / "agent.log", "w"),  # noqa: SIM115
                                     text=True, env=clean_env())

    def stop_agent(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def doctor(self, **over: str) -> tuple[int, dict[str, dict[str, Any]]]:
        r = CliRunner().invoke(doctor_cmd, [*self.flags(**over), "-o", "json"], env={"DPAGENT_API_ADDRESS": None})
        doc = json.loads(r.output)
        assert doc["ok"] == (r.exit_code == 0)
        return r.exit_code, {c["name"]: c for c in doc["checks"]}


@pytest.fixture(scope="module")
def healthy(cp: ControlPlaneProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(cp, tmp_path_factory.mktemp("doctor"))
    s.start_agent()
    yield s
    s.stop_agent()


def test_healthy_setup_passes(healthy: Setup) -> None:
    def all_ok() -> Any:
        code, checks = healthy.doctor()
        return (code, checks) if code == 0 and checks["xds"]["status"] == "ok" else None

    _code, checks = wait_for(all_ok, 30, 0.5, what="doctor all green")
    assert checks["control-plane"]["status"] == "ok" and "certificate trusted" in checks["control-plane"]["detail"]
    assert checks["token"]["status"] == "ok"
    assert re.search(r"token for dataplane web-1 in mesh default, expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d",
                     checks["token"]["detail"]), checks["token"]["detail"]
    assert checks["dataplane"]["detail"].startswith("default/web-1 is valid")
    assert checks["envoy"]["status"] == "ok"
    assert checks["xds"]["detail"].startswith("connected; every resource type sent was ACKed")
    assert checks["identity"]["status"] == "ok" and "spiffe://default/web" in checks["identity"]["detail"]
    if os.geteuid() == 0:
        assert checks["transparent-proxy"] == {"name": "transparent-proxy", "status": "ok",
                                               "detail": "not configured, and no rules installed", "fix": ""}
    assert checks["dns"]["status"] == "warn"  # no DNS proxy yet: reported, not failed
    assert "the DNS proxy is not running" in checks["dns"]["detail"]
    assert checks["ports"]["status"] in ("ok", "skip")


def test_text_output_explains_failures(healthy: Setup) -> None:
    r = CliRunner().invoke(doctor_cmd, healthy.flags(**{"--cp-address": f"https://127.0.0.1:{free_port()}"}))
    assert r.exit_code == 1
    assert "[FAIL] control-plane" in r.output and "fix: check --cp-address" in r.output
    assert r.output.rstrip().endswith("1 check(s) failed")


def test_control_plane_down(healthy: Setup) -> None:
    code, checks = healthy.doctor(**{"--cp-address": f"https://127.0.0.1:{free_port()}",
                                     "--api-address": f"http://127.0.0.1:{free_port()}"})
    assert code == 1
    assert checks["control-plane"]["status"] == "fail"
    assert "cannot connect to https://127.0.0.1:" in checks["control-plane"]["detail"]
    assert checks["xds"]["status"] == "skip"


def test_control_plane_certificate_not_trusted(healthy: Setup, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca_and_server_cert(["x"])["ca"])
    code, checks = healthy.doctor(**{"--ca-cert-file": str(other)})
    assert code == 1
    assert "its certificate is not trusted" in checks["control-plane"]["detail"]


def test_token_expired(healthy: Setup, tmp_path: Path) -> None:
    tok = tmp_path / "expired.token"
    tok.write_text(healthy.cp.token("web-1", valid_for="1s"))
    time.sleep(1.5)
    code, checks = healthy.doctor(**{"--dataplane-token-file": str(tok)})
    assert code == 1
    t = checks["token"]
    assert t["status"] == "fail" and "it expired at" in t["detail"]
    assert ("`dpagent token generate --name web-1 --mesh default --tag kuma.io/service=<service> --valid-for 720h`"
            in t["fix"])
    # ... and the agent itself stops at once with the same command (exit 3: retrying cannot help)
    out = subprocess.run([sys.executable, "-m", "dpagent", "run", *[a for a in healthy.flags(**{
        "--dataplane-token-file": str(tok), "--readiness-port": str(free_port()),
        "--work-dir": str(tmp_path / "w")}) if a not in ("--api-address", healthy.cp.api)]],
        capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 3, out.stderr
    assert "token expired at" in out.stderr
    assert "dpagent token generate --name web-1 --mesh default --tag kuma.io/service=<service> --valid-for 720h" in \
        out.stderr


def test_token_for_another_dataplane(healthy: Setup, tmp_path: Path) -> None:
    tok = tmp_path / "other.token"
    tok.write_text(healthy.cp.token("db-1"))
    code, checks = healthy.doctor(**{"--dataplane-token-file": str(tok)})
    assert code == 1 and "it is for dataplane db-1, not web-1" in checks["token"]["detail"]


def test_envoy_stopped(cp: ControlPlaneProc, tmp_path: Path) -> None:
    s = Setup(cp, tmp_path)  # same configuration, agent not running
    code, checks = s.doctor()
    assert code == 1
    assert checks["envoy"]["status"] == "fail"
    assert "dpagent (and so Envoy) is not running" in checks["envoy"]["detail"]
    assert checks["identity"]["status"] == "skip"


@pytest.mark.skipif(os.geteuid() != 0, reason="reading iptables rules needs root")
def test_transparent_proxy_rules_missing(cp: ControlPlaneProc, tmp_path: Path) -> None:
    s = Setup(cp, tmp_path)
    s.dp.write_text(DATAPLANE + TPROXY)
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False)
    if ":DPAGENT_" in out.stdout:
        pytest.skip("this host has DPAGENT_ rules installed")
    code, checks = s.doctor()
    assert code == 1
    assert checks["transparent-proxy"]["status"] == "fail"
    assert "no DPAGENT_ rules are installed" in checks["transparent-proxy"]["detail"]


def test_port_used_by_another_program(cp: ControlPlaneProc, tmp_path: Path) -> None:
    s = Setup(cp, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import socket,time; s=socket.socket(socket.AF_INET, "
                               f"socket.SOCK_DGRAM); s.bind(('127.0.0.1', {s.dns_port})); print('ok', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "ok"
        _code, checks = s.doctor()
        if checks["ports"]["status"] == "skip":
            pytest.skip(checks["ports"]["detail"])
        assert checks["ports"]["status"] == "fail"
        assert f"port {s.dns_port} is used by pid {holder.pid}" in checks["ports"]["detail"]
        assert "--dns-proxy-port" in checks["ports"]["detail"]
    finally:
        holder.kill()
        holder.wait()


def test_bad_config_is_one_failed_check(tmp_path: Path) -> None:
    r = CliRunner().invoke(doctor_cmd, ["-o", "json", "--cp-address", "nope"])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["checks"][0]["name"] == "config" and doc["checks"][0]["status"] == "fail"
