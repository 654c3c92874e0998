"""`dpagent run` against a bootstrap server, with the real Envoy: start, drain, restart, crash loop, failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import psutil
import pytest
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy]


def probe_port(cp, name: str = "web-1") -> int:
    return cp.listener_ports[name]


def test_start_ready_and_request_fields(launch, cp):
    agent = launch("web-1")
    agent.wait_ready()
    r = agent.ready()
    assert r.status_code == 200 and r.text.strip() == "READY"
    assert httpx.get(f"http://127.0.0.1:{agent.readiness_port}/stats").status_code == 404
    req = cp.requests[0]
    assert req["name"] == "web-1" and req["mesh"] == "default" and req["proxyType"] == "dataplane"
    assert req["dataplaneToken"] == "test-token"
    assert req["version"]["envoy"]["version"] == "1.40.0"
    assert '"kuma.io/service":"web"' in req["dataplaneResource"]
    assert req["caCert"].startswith("-----BEGIN CERTIFICATE-----")
    workdir = req["workdir"]
    assert oct(os.stat(f"{workdir}/bootstrap.yaml").st_mode & 0o777) == "0o600"
    # the Envoy the agent launched serves the bootstrap's listener
    assert httpx.get(f"http://127.0.0.1:{probe_port(cp)}/").text == "hello"
    agent.signal(signal.SIGINT)
    agent.signal(signal.SIGINT)
    code, _ = agent.finish()
    assert code == 0
    assert not os.path.exists(workdir), "an auto-created work dir is removed on exit"


def test_sigterm_drains_in_order(launch, cp):
    agent = launch("web-1", "--drain-time", "3s")
    agent.wait_ready()
    [envoy_pid] = agent.envoy_pids()
    health = f"http://127.0.0.1:{probe_port(cp)}/healthz"
    assert httpx.get(health).status_code == 200
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    wait_for(lambda: agent.ready().status_code == 503, 3, what="readiness 503")
    assert agent.ready().text.strip() == "TERMINATING"
    # Envoy was told /healthcheck/fail: its health check filter now fails, while it still serves
    wait_for(lambda: httpx.get(health).status_code == 503, 3, what="Envoy health check failed")
    assert psutil.pid_exists(envoy_pid)
    code, err = agent.finish()
    elapsed = time.monotonic() - t0
    assert code == 0, err
    assert 2.5 <= elapsed < 10, f"the drain should wait about --drain-time (3s), took {elapsed:.1f}s"
    assert not psutil.pid_exists(envoy_pid) or psutil.Process(envoy_pid).status() == psutil.STATUS_ZOMBIE


def test_second_signal_cuts_the_drain_short(launch, cp):
    agent = launch("web-1", "--drain-time", "30s")
    agent.wait_ready()
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    wait_for(lambda: agent.ready().status_code == 503, 3)
    agent.signal(signal.SIGTERM)
    code, _ = agent.finish(timeout=15)
    assert code == 0
    assert time.monotonic() - t0 < 8


def test_envoy_killed_is_restarted(launch, cp):
    agent = launch("web-1", "--envoy-restart-backoff", "200ms")
    agent.wait_ready()
    [first] = agent.envoy_pids()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: agent.envoy_pids() and agent.envoy_pids()[0] != first, 10, what="a new Envoy")
    agent.wait_ready()
    assert agent.proc.poll() is None
    assert httpx.get(f"http://127.0.0.1:{probe_port(cp)}/").text == "hello"
    agent.signal()
    agent.signal()
    assert agent.finish()[0] == 0


def test_crash_loop_exits_with_envoys_last_error(launch, cp):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    cp.listener_ports["web-1"] = blocker.getsockname()[1]  # Envoy cannot bind its listener: it exits at start
    try:
        agent = launch("web-1", "--envoy-restart-backoff", "100ms", "--envoy-max-crashes", "3")
        code, err = agent.finish(timeout=30)
    finally:
        blocker.close()
    assert code == 5, err
    assert "Envoy exited 3 times" in err
    assert "Address already in use" in err or "cannot bind" in err


def test_cp_unreachable_retries_then_exits(launch, cp):
    dead = f"https://127.0.0.1:{free_port()}"
    agent = launch("web-1", "--cp-address", dead, "--cp-retry-backoff", "200ms", "--cp-retry-max-duration", "1s")
    code, err = agent.finish()
    assert code == 4, err
    assert "could not fetch the Envoy bootstrap" in err and "cannot connect" in err
    assert err.count("bootstrap failed, will retry") >= 2


def test_validation_error_exits_at_once(launch, cp):
    body = {"title": "Resource is not valid", "causes": [{"field": "mesh", "message": 'mesh "x" does not exist'}]}
    cp.script = [(422, json.dumps(body))]
    t0 = time.monotonic()
    agent = launch("web-1", "--cp-retry-backoff", "5s")
    code, err = agent.finish()
    assert code == 3, err
    assert 'mesh "x" does not exist' in err
    assert time.monotonic() - t0 < 5, "a 422 must not be retried"
    assert len(cp.requests) == 1


def test_token_rejected_and_not_found_is_retried(launch, cp):
    cp.script = [(404, ""), (401, "token expired at 2026-01-01")]
    agent = launch("web-1", "--cp-retry-backoff", "100ms")
    code, err = agent.finish()
    assert code == 3, err
    assert "not registered on the control plane yet" in err
    assert "token expired at 2026-01-01" in err and "dpagent token generate" in err
    assert len(cp.requests) == 2


def test_untrusted_cp_certificate_is_a_clear_error(launch, cp):
    agent = launch("web-1", ca=False)
    code, err = agent.finish()
    assert code == 3, err
    assert "not trusted" in err and "--ca-cert-file" in err
    assert len(cp.requests) == 0


def test_two_agents_on_one_host(launch, cp):
    a = launch("web-1")
    b = launch("web-2")
    a.wait_ready()
    b.wait_ready()
    assert a.readiness_port != b.readiness_port
    assert {r["workdir"] for r in cp.requests} and len({r["workdir"] for r in cp.requests}) == 2
    for agent in (a, b):
        agent.signal()
        agent.signal()
        assert agent.finish()[0] == 0


def test_readiness_port_clash_fails_fast(launch, cp):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        agent = launch("web-1", readiness_port=port)
        code, err = agent.finish()
    finally:
        busy.close()
    assert code == 2, err
    assert f"port {port}" in err and "--readiness-port" in err and "already in use" in err
    assert cp.requests == [], "a local problem must be found before contacting the control plane"
