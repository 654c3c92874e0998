"""MeshTimeout through a real mesh (CP, agents, Envoys, mTLS on): what a client sees, not what the config says.

`backend` answers after 3 s; with `requestTimeout: 1s` toward it the client gets Envoy's 504 after about 1 s
instead of the answer after 3 s. `db` is a TCP app that keeps every connection open; with `idleTimeout: 1s`
toward it, a client connection that goes quiet is closed by the client's Envoy after about 1 s. The default mesh
was created at the CP's first start, so it carries Kuma's initial `mesh-timeout-all-default` (15 s requests).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import dataplane, outbound, policy_to, put, start_dataplanes, tcp_call, url
from testlib import EchoApp, free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("be_in", "db_in", "w_in", "w_out_be", "w_out_db")}
WEB_OUTBOUND = outbound(backend=PORTS["w_out_be"], db=PORTS["w_out_db"])


def timeout_to(name: str, service: str, conf: dict[str, Any]) -> dict[str, Any]:
    return policy_to("MeshTimeout", name, conf, service)


def db_echo() -> bytes:
    return tcp_call(PORTS["w_out_db"], b"hi")


@pytest.fixture(scope="module")
def mesh(cp, agents):
    backend, db = BackendApp("be", delay=0.0), EchoApp()  # echoes and never closes a connection itself
    start_dataplanes(agents, {"backend-1": dataplane("backend-1", "backend", PORTS["be_in"], backend.port),
                              "db-1": dataplane("db-1", "db", PORTS["db_in"], db.port, "tcp"),
                              "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=WEB_OUTBOUND)})
    with httpx.Client(timeout=5) as c:
        wait_for(lambda: c.get(url(PORTS["w_out_be"])).status_code == 200, 30,
                 what="web -> backend through the mesh")
    wait_for(lambda: db_echo() == b"hi", 20, what="web -> db through the mesh")
    yield backend
    backend.close()


def test_default_mesh_has_kuma_initial_timeouts(cp, mesh) -> None:
    names = {i["name"] for i in httpx.get(f"{cp.api}/meshes/default/meshtimeouts", timeout=5).json()["items"]}
    assert {"mesh-timeout-all-default", "mesh-gateways-timeout-all-default"} <= names


def test_request_timeout_cuts_a_slow_backend(cp, mesh) -> None:
    backend = mesh
    backend.set(delay=3.0)
    slow = url(PORTS["w_out_be"], "/slow")
    with httpx.Client(timeout=10) as c:
        t0 = time.monotonic()
        assert c.get(slow).status_code == 200  # the mesh default (15 s) lets a 3 s answer through
        assert time.monotonic() - t0 >= 2.9
        put(cp, timeout_to("backend-1s", "backend", {"http": {"requestTimeout": "1s"}}))
        wait_for(lambda: c.get(slow).status_code == 504, 20, what="504 from web's Envoy after requestTimeout")
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            r = c.get(slow)
            took.append(time.monotonic() - t0)
            assert r.status_code == 504 and "upstream request timeout" in r.text
    print(f"requestTimeout 1s against a 3 s backend: 504 after {', '.join(f'{t:.2f}' for t in took)} s")
    assert all(0.9 <= t < 2.0 for t in took), took
    backend.set(delay=0.0)


def test_idle_tcp_connection_closes_after_idle_timeout(cp, mesh) -> None:
    put(cp, timeout_to("db-idle-1s", "db", {"idleTimeout": "1s"}))

    def closed_after() -> float:
        with socket.create_connection(("127.0.0.1", PORTS["w_out_db"]), timeout=3) as s:
            s.sendall(b"hi")
            assert s.recv(100) == b"hi"
            t0 = time.monotonic()
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                return 99.0  # still open: the policy has not reached this connection's listener yet
            assert data == b""
            return time.monotonic() - t0

    # The listener change reaches new connections once Envoy has it: wait until a quiet one is cut in ~1 s.
    wait_for(lambda: closed_after() < 2.0, 30, interval=0.1, what="idle db connection closed by web's Envoy")
    took = [closed_after() for _ in range(2)]
    print(f"idleTimeout 1s on a quiet TCP connection: closed after {', '.join(f'{t:.2f}' for t in took)} s")
    assert all(0.9 <= t < 2.0 for t in took), took
