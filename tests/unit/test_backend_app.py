"""The resilience tests' backend does what its switches say, so a policy test failing means the policy failed."""

from __future__ import annotations

import time

import httpx
import pytest
from backend_app import BackendApp


@pytest.fixture
def app():
    a = BackendApp("v1")
    yield a
    a.close()


def test_answers_with_its_instance(app: BackendApp) -> None:
    r = httpx.get(f"http://127.0.0.1:{app.port}/x?y=1", headers={"x-test": "a"})
    assert r.status_code == 200 and r.headers["x-instance"] == "v1"
    body = r.json()
    assert (body["instance"], body["method"], body["path"], body["headers"]["x-test"]) == ("v1", "GET", "/x?y=1", "a")


def test_error_rate_is_exact_and_per_method(app: BackendApp) -> None:
    app.set(error_rate=0.3, error_methods=frozenset({"GET"}))
    with httpx.Client(base_url=f"http://127.0.0.1:{app.port}") as c:
        codes = [c.get("/").status_code for _ in range(100)]
        posts = [c.post("/", content=b"x").status_code for _ in range(20)]
    assert codes.count(503) == 30
    assert set(posts) == {200}
    assert app.by_method == {"GET": 100, "POST": 20}


def test_delay_and_health_switches(app: BackendApp) -> None:
    url = f"http://127.0.0.1:{app.port}"
    app.set(delay=0.3)
    t0 = time.monotonic()
    assert httpx.get(url).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    assert httpx.get(f"{url}/health").status_code == 200
    app.set(health="fail")
    assert httpx.get(f"{url}/health").status_code == 503
    app.set(health="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{url}/health", timeout=0.3)
    with pytest.raises(AttributeError, match="no switch 'bogus'"):
        app.set(bogus=1)
