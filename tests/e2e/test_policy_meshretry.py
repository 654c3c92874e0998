"""MeshRetry through a real mesh (CP, agents, Envoys, mTLS on): a backend failing exactly 30 % of its requests with
503 and a client calling it through its outbound. Retries are proven by what the backend counted, not by config:
more requests reached it than the client sent, and a POST that `retryOn` excludes reached it exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import dataplane, outbound, policy_to, put, start_dataplanes, url
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS = {k: free_port() for k in ("b_in", "w_in", "w_out")}
URL = url(PORTS["w_out"])
OUTBOUND = outbound(backend=PORTS["w_out"])


def put_retry(cp: Any, name: str, http: dict[str, Any]) -> None:
    put(cp, policy_to("MeshRetry", name, {"http": http}, target={"kind": "Dataplane", "labels": {"app": "web"}}))


@pytest.fixture(scope="module")
def backend(cp, agents):
    app = BackendApp("b1")
    start_dataplanes(agents, {"backend-1": dataplane("backend-1", "backend", PORTS["b_in"], app.port),
                              "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=OUTBOUND)})
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: c.get(URL).status_code == 200, 30, what="web -> backend through the mesh")
    yield app
    app.close()


def _streak(client: httpx.Client, method: str, n: int) -> bool:
    """n requests in a row all succeed: impossible at an exact 30 % error rate unless Envoy retries."""
    return all(client.request(method, URL).status_code == 200 for _ in range(n))


def test_three_retries_turn_30_percent_errors_into_success(backend, cp):
    backend.set(error_rate=0.3, error_status=503)
    with httpx.Client(timeout=5) as client:
        # numRetries 0 = no retry policy, whatever else applies (e.g. Kuma's mesh-retry-all default policy).
        put_retry(cp, "retry-backend", {"numRetries": 0})
        wait_for(lambda: any(client.get(URL).status_code == 503 for _ in range(10)), 15, interval=0.1,
                 what="GETs not retried")
        before = Counter(client.get(URL).status_code for _ in range(100))
        assert before[503] >= 25, f"the backend should fail ~30 % without retries: {before}"
        put_retry(cp, "retry-backend", {"numRetries": 3})
        wait_for(lambda: _streak(client, "GET", 20), 15, interval=0.1, what="the retry policy in effect")
        seen = backend.requests
        statuses = Counter(client.get(URL).status_code for _ in range(1000))
        reached = backend.requests - seen
    success = statuses[200] / 1000
    print(f"MeshRetry off: {before[200]}/100 succeeded; numRetries 3 at 30 % 503s: {success:.1%} success over "
          f"1,000 requests; the backend saw {reached} requests ({reached - 1000} retries)")
    assert success >= 0.995, statuses
    # Every failed first try is retried: ~1000 × 0.3/0.7 ≈ 429 retries; well above zero proves Envoy did it.
    assert reached - 1000 >= 300, f"only {reached - 1000} retries reached the backend"


def test_post_is_not_retried_when_retry_on_excludes_it(backend, cp):
    backend.set(error_rate=0.3, error_status=503)
    put_retry(cp, "retry-backend", {"numRetries": 3, "retryOn": ["5xx", "HttpMethodGet"]})
    with httpx.Client(timeout=5) as client:
        # Under the previous policy POSTs were retried too (never a 503): the first 503 marks the new policy.
        wait_for(lambda: any(client.post(URL, content=b"x").status_code == 503 for _ in range(10)), 15,
                 interval=0.1, what="POST no longer retried")
        posts, gets = backend.by_method["POST"], backend.by_method["GET"]
        post_statuses = Counter(client.post(URL, content=b"x").status_code for _ in range(200))
        get_statuses = Counter(client.get(URL).status_code for _ in range(200))
        posts, gets = backend.by_method["POST"] - posts, backend.by_method["GET"] - gets
    print(f"retryOn [5xx, HttpMethodGet]: 200 POSTs reached the backend {posts} times ({post_statuses[503]} "
          f"failed); 200 GETs reached it {gets} times ({get_statuses[503]} failed)")
    assert posts == 200, f"a POST was retried: the backend saw {posts} POSTs for 200 sent"
    assert 40 <= post_statuses[503] <= 80, post_statuses  # the backend's 30 % share, passed through untouched
    assert get_statuses == {200: 200} and gets > 200, (get_statuses, gets)
