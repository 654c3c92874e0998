"""A real mesh on a control plane whose store is a real PostgreSQL, with a second CP replica on the same database:
a policy applied through replica B reaches the Envoys connected to replica A within seconds, through the
database's change feed (trigger + NOTIFY → A's listener → A's xDS push), and removing it restores traffic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pgserver
import pytest
from e2e.meshlib import dataplane, deny_web, outbound, url
from pgserver import PgServer
from testlib import HttpApp, free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS = {k: free_port() for k in ("b_in", "w_in", "w_out_b")}





@pytest.fixture(scope="module")
def cp_env(pg_server: PgServer) -> dict[str, str]:
    """Replica A (the e2e `cp` fixture, which the agents use) runs on a migrated PostgreSQL database."""
    database = asyncio.run(pg_server.create_database())
    # Both replicas seal Secrets with one key (each would otherwise make its own and B would refuse to start).
    env = pgserver.store_env(pg_server, database)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    out = subprocess.run([sys.executable, "-m", "dpagent", "cp", "migrate", "up"], capture_output=True, text=True,
                         env={**clean, **env}, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return env


@pytest.fixture(scope="module")
def cp_b(tmp_path_factory: pytest.TempPathFactory, cp_env: dict[str, str], cp: Any) -> Iterator[Any]:
    """Replica B: another CP process on the same database."""
    c = type(cp)(tmp_path_factory.mktemp("cp-b") / "data", cp_env)
    c.start()
    yield c
    c.stop()


def via_web() -> httpx.Response:
    return httpx.get(url(PORTS["w_out_b"], "/hello"), timeout=3)


def test_policy_applied_through_another_replica_reaches_the_proxies(cp, cp_b, agents) -> None:
    backend = HttpApp("backend")
    agents("backend-1", dataplane("backend-1", "backend", PORTS["b_in"], backend.port))
    agents("web-1", dataplane("web-1", "web", PORTS["w_in"], 1, outbound=outbound(backend=PORTS["w_out_b"])))
    wait_for(lambda: via_web().status_code == 200, 20, what="web -> backend over mTLS, CP on PostgreSQL")
    assert via_web().text == "backend /hello"
    # Both replicas list what the agents registered through A.
    assert "web-1" in cp_b.cli("get", "dataplanes").stdout
    cp_b.cli("apply", "-f", "-", input=deny_web())
    wait_for(lambda: via_web().status_code == 403, 10, interval=0.05, what="403 after a Deny applied via replica B")
    cp_b.cli("delete", "mtp", "deny-web")
    wait_for(lambda: via_web().status_code == 200, 10, what="200 after the Deny is deleted via replica B")
