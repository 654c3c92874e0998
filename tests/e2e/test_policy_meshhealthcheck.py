"""MeshHealthCheck through a real mesh (CP, agents, Envoys, mTLS): web's Envoy health-checks both `backend`
instances over the same path traffic takes (the instance's inbound, its proxy, then the app's /health).

An instance whose app stops answering /health must leave rotation within interval × unhealthyThreshold (plus the
check timeout) and come back after it recovers; a client at a fixed rate sees where its requests land. The policy is
in force once web's Envoy ACKs the cluster update (xDS status in `inspect`), never after a fixed wait.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from backend_app import BackendApp
from e2e.meshlib import Load, dataplane, outbound, policy_to, put_acked, start_dataplanes, url, wait_instances
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("good_in", "sick_in", "web_in", "web_out")}
WEB_OUTBOUND = outbound(backend=PORTS["web_out"])
URL = url(PORTS["web_out"])
INTERVAL, TIMEOUT, UNHEALTHY, HEALTHY = 1.0, 0.5, 2, 1


@pytest.fixture(scope="module")
def mesh(cp, agents):
    apps = {"good": BackendApp("good"), "sick": BackendApp("sick")}
    start_dataplanes(agents, {
        **{f"backend-{n}": dataplane(f"backend-{n}", "backend", PORTS[f"{n}_in"], apps[n].port) for n in apps},
        "web-1": dataplane("web-1", "web", PORTS["web_in"], 1, outbound=WEB_OUTBOUND)})
    wait_instances(URL, {"good", "sick"})
    yield apps
    for app in apps.values():
        app.close()


def apply(cp: Any, conf: dict[str, Any]) -> None:
    put_acked(cp, policy_to("MeshHealthCheck", "hc", conf), "the health-checked clusters")


def test_unanswered_health_path_leaves_rotation_and_recovery_returns(mesh, cp):
    sick = mesh["sick"]
    apply(cp, {"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s", "unhealthyThreshold": UNHEALTHY,
               "healthyThreshold": HEALTHY, "noTrafficInterval": f"{INTERVAL}s",
               "http": {"path": "/health", "expectedStatuses": [200]}})
    checks = sick.health_checks
    wait_for(lambda: sick.health_checks >= checks + 2, 10, what="health checks reaching the app through its proxy")
    load = Load(URL)
    try:
        wait_for(lambda: len(load.seen) >= 25, 5, what="load running")
        stopped = time.monotonic()
        sick.set(health="hang")
        budget = INTERVAL * UNHEALTHY + TIMEOUT
        # out of rotation: a full second of load with nothing served by the sick instance
        wait_for(lambda: (last := max(load.served_by("sick", 0), default=0)) and
                 time.monotonic() - last > 1.0 and last, budget + 5, interval=0.05, what="sick out of rotation")
        left = max(load.served_by("sick", 0)) - stopped
        wait_for(lambda: sum(1 for t, _, _ in load.seen if t > stopped + left + 0.2) >= 50, 5,
                 what="50 more requests with the sick instance out")
        out_window = [(s, i) for t, s, i in load.seen if t > stopped + left + 0.2]
        recovered = time.monotonic()
        sick.set(health="ok")
        back = wait_for(lambda: next(iter(load.served_by("sick", recovered)), None), INTERVAL * HEALTHY + 5,
                        interval=0.05, what="sick back in rotation") - recovered
    finally:
        load.stop()
        sick.set(health="ok")
    statuses = Counter(s for _, s, _ in load.seen)
    print(f"health path hangs: left rotation {left:.2f}s later (budget interval×unhealthyThreshold+timeout = "
          f"{budget:.1f}s); recovered: back in {back:.2f}s; {len(load.seen)} requests {dict(statuses)}")
    assert left <= budget + 1.0, left  # slack for the checks' own schedule and the host-set update
    assert out_window and all(i == "good" and s == 200 for s, i in out_window), Counter(out_window)
    assert back <= INTERVAL * HEALTHY + TIMEOUT + 2.0, back  # the next check after recovery, plus scheduling
    assert set(statuses) == {200}, statuses  # traffic never failed: the app itself kept answering
