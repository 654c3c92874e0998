"""MeshRateLimit through a real mesh: web-1 → backend-1, the limit enforced by backend-1's own proxy.

A client thread sends at a fixed 50 req/s (its own clock, not paced by the answers) while the backend's inbound
allows 10 req/s; the configured status and header mark every refused request, and the app's counter shows the
refused ones never reached it.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import NameApp, dataplane, delete, outbound, put, start_dataplanes, tcp_call, url, wait_instances
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "db_in", "w_in", "w_out", "w_out_db")}
WEB_OUTBOUND = outbound(backend=PORTS["w_out"], db=PORTS["w_out_db"])
URL = url(PORTS["w_out"])
RATE, LOAD, SECONDS = 10, 50, 5.0

# Kuma's docs example shape, with our numbers.
POLICY = {"type": "MeshRateLimit", "mesh": "default", "name": "backend-rate-limit", "spec": {
    "targetRef": {"kind": "MeshService", "name": "backend"},
    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {"http": {
        "requestRate": {"num": RATE, "interval": "1s"},
        "onRateLimit": {"status": 423, "headers": {"set": [{"name": "x-kuma-rate-limited", "value": "true"}]}}}}}}]}}


@pytest.fixture(scope="module")
def mesh(cp, agents):
    app = BackendApp("b1")
    db = NameApp("db-1")
    start_dataplanes(agents, {"backend-1": dataplane("backend-1", "backend", PORTS["b_in"], app.port),
                              "db-1": dataplane("db-1", "db", PORTS["db_in"], db.port, "tcp"),
                              "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=WEB_OUTBOUND)})
    wait_instances(URL, {"b1"}, tries=1, what="web -> backend through the mesh")
    wait_for(lambda: db_call() == b"db-1", 30, what="web -> db through the mesh")
    yield app
    app.close()


def test_10_per_second_allowed_under_a_fixed_50_per_second_load(mesh, cp):
    app = mesh
    put(cp, POLICY)
    with httpx.Client(timeout=3) as client:
        wait_for(lambda: any(client.get(URL).status_code == 423 for _ in range(3 * RATE)), 10, interval=0.0,
                 what="rate limit in force")
        time.sleep(1.1)  # let the bucket refill: the measured window starts with a full bucket, as a fresh proxy
        got: Counter[tuple[int, str | None, str | None]] = Counter()
        before = app.requests
        start = time.monotonic()
        sent = 0
        while time.monotonic() < start + SECONDS:
            sent += 1
            resp = client.get(URL)
            got[(resp.status_code, resp.headers.get("x-kuma-rate-limited"), resp.headers.get("x-instance"))] += 1
            time.sleep(max(0.0, start + sent / LOAD - time.monotonic()))
        elapsed = time.monotonic() - start
        reached = app.requests - before
    ok = got[(200, None, "b1")]
    limited = got[(423, "true", None)]
    print(f"rate limit {RATE}/s under {sent / elapsed:.1f} req/s for {elapsed:.1f}s: {ok} allowed "
          f"({ok / elapsed:.1f}/s), {limited} refused with 423 + x-kuma-rate-limited; app saw {reached}")
    assert set(got) <= {(200, None, "b1"), (423, "true", None)}, got
    assert sent / elapsed >= 0.8 * LOAD, "the client could not hold its load rate"
    # one full bucket at the start, then RATE per second: ~60 over 5 s; the rest are refused
    assert RATE * elapsed * 0.8 <= ok <= RATE * (elapsed + 1) * 1.2, got
    assert limited == sent - ok and reached == ok
    delete(cp, "MeshRateLimit", POLICY["name"])


def db_call() -> bytes:
    """One TCP exchange through web's outbound; b"" when a proxy closed the connection instead."""
    return tcp_call(PORTS["w_out_db"])


def test_tcp_connection_rate(mesh, cp):
    """3 connections per 10 s on db's inbound: once the bucket is full again, exactly the first 3 of 12 quick
    connections reach the app (Envoy refills 0.3 tokens/s, far too slow to admit a 4th within the burst)."""
    doc = {"type": "MeshRateLimit", "mesh": "default", "name": "db-conns", "spec": {
        "targetRef": {"kind": "MeshService", "name": "db"},
        "rules": [{"default": {"local": {"tcp": {"connectionRate": {"num": 3, "interval": "10s"}}}}}]}}
    put(cp, doc)
    wait_for(lambda: db_call() == b"", 10, interval=0.05, what="connection limit in force (bucket empty)")
    time.sleep(10.2)  # a full bucket again
    answers = [db_call() for _ in range(12)]
    print(f"tcp connectionRate 3/10s: {answers.count(b'db-1')} of 12 quick connections served")
    assert answers[:3] == [b"db-1"] * 3 and answers.count(b"db-1") == 3, answers
    delete(cp, "MeshRateLimit", "db-conns")
