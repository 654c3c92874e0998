"""MeshFaultInjection through a real mesh: CP, agents and Envoys on loopback, web-1 → backend-1.

The faults are injected by the receiving proxy (backend-1's inbound), so an aborted request never reaches the
app: the 503s lack the app's `x-instance` header and the app's request counter tells the same story.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import dataplane, delete, outbound, policy_to, put, start_dataplanes, url, wait_instances
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "w_in", "w_out")}
WEB_OUTBOUND = outbound(backend=PORTS["w_out"])
URL = url(PORTS["w_out"])


def mfi(name: str, *http: dict[str, Any]) -> dict[str, Any]:
    """Kuma's own shape: the receiving service as top targetRef, faults for every caller."""
    return {"type": "MeshFaultInjection", "mesh": "default", "name": name, "spec": {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": list(http)}}]}}


@pytest.fixture(scope="module")
def mesh(cp, agents):
    app = BackendApp("b1")
    start_dataplanes(agents, {"backend-1": dataplane("backend-1", "backend", PORTS["b_in"], app.port),
                              "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=WEB_OUTBOUND)})
    # Every new mesh has Kuma's default MeshRetry, whose retries on 5xx would hide most injected aborts from the
    # client (as they would in Kuma). This test measures the fault itself, so web's calls to backend never retry.
    put(cp, policy_to("MeshRetry", "mfi-no-retry", {"http": {"numRetries": 0}}))
    wait_instances(URL, {"b1"}, tries=1, what="web -> backend through the mesh")
    yield app
    app.close()


def test_abort_30_percent_then_delay_500ms_at_50_percent(mesh, cp):
    app = mesh
    with httpx.Client(timeout=3) as client:
        put(cp, mfi("abort", {"abort": {"httpStatus": 503, "percentage": 30}}))
        wait_for(lambda: any(client.get(URL).status_code == 503 for _ in range(20)), 10, interval=0.02,
                 what="aborts injected")
        before = app.requests
        got = Counter((r.status_code, r.headers.get("x-instance")) for r in (client.get(URL) for _ in range(1000)))
        reached = app.requests - before
    aborted = got[(503, None)]
    print(f"abort 30 %: {aborted} of 1000 requests got the injected 503 ({aborted / 10:.1f} %); app saw {reached}")
    assert set(got) <= {(503, None), (200, "b1")}, got
    assert 250 <= aborted <= 350, got  # 30 % ± 5 points
    assert reached == 1000 - aborted  # aborted by the backend's proxy, never forwarded to the app

    delete(cp, "MeshFaultInjection", "abort")
    put(cp, mfi("delay", {"delay": {"value": "500ms", "percentage": 50}}))

    def timed(c: httpx.Client) -> tuple[int, float]:
        t = time.monotonic()
        status = c.get(URL).status_code
        return status, time.monotonic() - t

    with httpx.Client(timeout=5, limits=httpx.Limits(max_connections=50)) as client:
        wait_for(lambda: timed(client)[1] >= 0.45, 10, interval=0.0, what="delays injected")
        wait_for(lambda: all(timed(client)[0] == 200 for _ in range(30)), 10, what="aborts gone")
        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(lambda _: timed(client), range(400)))
    assert all(s == 200 for s, _ in results), Counter(s for s, _ in results)
    times = sorted(t for _, t in results)
    delayed = sum(t >= 0.5 for t in times)
    q = statistics.quantiles(times, n=10)
    print(f"delay 500 ms at 50 %: {delayed} of 400 delayed; p10 {q[0] * 1000:.0f} ms, p30 {q[2] * 1000:.0f} ms, "
          f"p50 {q[4] * 1000:.0f} ms, p70 {q[6] * 1000:.0f} ms, p90 {q[8] * 1000:.0f} ms")
    assert 160 <= delayed <= 240, delayed  # 50 % ± 10 points over 400 requests
    assert q[2] < 0.4 and q[6] >= 0.5, q  # p30 fast, p70 (and so p90) carry the 500 ms
    delete(cp, "MeshFaultInjection", "delay")
