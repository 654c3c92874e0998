"""MeshHealthCheck through a real mesh (CP, agents, Envoys, mTLS): web's Envoy health-checks both `backend`
instances over the same path traffic takes (the instance's inbound, its proxy, then the app's /health).

An instance whose app stops answering /health must leave rotation within interval × unhealthyThreshold (plus the
check timeout) and come back after it recovers; a client at a fixed rate sees where its requests land. The policy is
in force once web's Envoy ACKs the cluster update (xDS status in `inspect`), never after a fixed wait.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from testlib import free_port, mesh_dataplane, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
PORTS: dict[str, int] = {k: free_port() for k in ("good_in", "sick_in", "web_in", "web_out")}
WEB_OUTBOUND = f"""\
  outbound:
  - port: {PORTS['web_out']}
    tags:
      kuma.io/service: backend
"""
URL = f"http://127.0.0.1:{PORTS['web_out']}/"
INTERVAL, TIMEOUT, UNHEALTHY, HEALTHY = 1.0, 0.5, 2, 1


@pytest.fixture(scope="module")
def mesh(cp, agents):
    apps = {"good": BackendApp("good"), "sick": BackendApp("sick")}
    started = [agents(f"backend-{n}", mesh_dataplane(f"backend-{n}", "backend", PORTS[f"{n}_in"], apps[n].port),
                      wait=False) for n in ("good", "sick")]
    started.append(agents("web-1", mesh_dataplane("web-1", "web", PORTS["web_in"], 1, outbound=WEB_OUTBOUND),
                          wait=False))
    for a in started:
        a.wait_ready(40)
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: {c.get(URL).headers.get("x-instance") for _ in range(10)} == {"good", "sick"}, 30,
                 what="web -> both backend instances through the mesh")
    yield apps
    for app in apps.values():
        app.close()


def _clusters(cp: Any) -> dict[str, Any]:
    return (cp.inspect("web-1").get("xds") or {}).get("types", {}).get(CLUSTER, {})


def apply(cp: Any, conf: dict[str, Any]) -> None:
    before = _clusters(cp).get("snapshot_version")
    doc = {"type": "MeshHealthCheck", "mesh": "default", "name": "hc", "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": conf}]}}
    r = httpx.put(f"{cp.api}/meshes/default/meshhealthchecks/hc", json=doc, timeout=5)
    assert r.status_code in (200, 201), r.text

    def acked() -> bool:
        s = _clusters(cp)
        return s.get("snapshot_version") != before and s.get("acked_version") == s.get("snapshot_version")

    wait_for(acked, 15, what="web's Envoy ACKing the health-checked clusters")


class Load:
    """A client at a fixed rate (its own clock) recording (time, status, instance) of every request."""

    def __init__(self, rate: float = 50.0) -> None:
        self.seen: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._rate = rate
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=3) as c:
            start, i = time.monotonic(), 0
            while not self._stop.is_set():
                i += 1
                try:
                    r = c.get(URL)
                    self.seen.append((time.monotonic(), r.status_code, r.headers.get("x-instance", "")))
                except httpx.HTTPError:
                    self.seen.append((time.monotonic(), 0, ""))
                time.sleep(max(0.0, start + i / self._rate - time.monotonic()))

    def served_by(self, instance: str, after: float) -> list[float]:
        return [t for t, s, i in self.seen if t > after and i == instance and s == 200]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_unanswered_health_path_leaves_rotation_and_recovery_returns(mesh, cp):
    sick = mesh["sick"]
    apply(cp, {"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s", "unhealthyThreshold": UNHEALTHY,
               "healthyThreshold": HEALTHY, "noTrafficInterval": f"{INTERVAL}s",
               "http": {"path": "/health", "expectedStatuses": [200]}})
    checks = sick.health_checks
    wait_for(lambda: sick.health_checks >= checks + 2, 10, what="health checks reaching the app through its proxy")
    load = Load()
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
