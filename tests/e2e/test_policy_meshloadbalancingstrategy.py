"""MeshLoadBalancingStrategy through a real mesh: CP, agents, Envoys and three instances of `backend`
(tests/backend_app.py, each answering with its `x-instance`), one client `web` in zone-1. b1 is in zone-1, b2 and
b3 in zone-2. Each test waits for the behaviour its policy causes (never for a fixed time), then measures it.

Checked: RingHash on a header pins every header value to one instance over 200 requests (and still spreads the
values); RoundRobin spreads requests carrying one header value evenly (±10 %) again; locality awareness keeps
every request in the client's zone."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.meshlib import dataplane, outbound, policy_to, put, start_dataplanes, url
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b1", "b2", "b3", "w_in", "w_out")}
ZONES = {"b1": "zone-1", "b2": "zone-2", "b3": "zone-2"}
NAME = "lb-backend"
USERS = [f"user-{i}" for i in range(20)]


def strategy(default: dict[str, Any]) -> dict[str, Any]:
    return policy_to("MeshLoadBalancingStrategy", NAME, default)


NO_LOCALITY = {"localityAwareness": {"disabled": True}}
RING_HASH = {"loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "XXHash"}},
             "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}], **NO_LOCALITY}
ROUND_ROBIN = {"loadBalancer": {"type": "RoundRobin"}, **NO_LOCALITY}


def who(client: httpx.Client, user: str | None = None) -> str:
    r = client.get(url(PORTS["w_out"]), headers={"x-user": user} if user else {})
    assert r.status_code == 200, r.text
    return r.headers["x-instance"]


def pinned(client: httpx.Client, users: list[str], tries: int) -> bool:
    return all(len({who(client, u) for _ in range(tries)}) == 1 for u in users)


@pytest.fixture(scope="module")
def mesh(cp, agents):
    apps = {n: BackendApp(n) for n in ZONES}
    start_dataplanes(agents, {
        **{n: dataplane(n, "backend", PORTS[n], apps[n].port, tags={"kuma.io/zone": z}) for n, z in ZONES.items()},
        "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=outbound(backend=PORTS["w_out"]),
                           tags={"kuma.io/zone": "zone-1"})})
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: {who(c) for _ in range(12)} == set(ZONES), 30, what="web -> b1, b2 and b3 through the mesh")
    yield apps
    for app in apps.values():
        app.close()


def test_ring_hash_pins_each_header_value_then_round_robin_spreads_again(mesh, cp):
    with httpx.Client(timeout=3) as client:
        put(cp, strategy(RING_HASH))
        wait_for(lambda: pinned(client, USERS[:4], 6), 15, what="x-user values pinned by the ring hash")
        answers: dict[str, Counter[str]] = {u: Counter() for u in USERS}
        for i in range(200):
            user = USERS[i % len(USERS)]
            answers[user][who(client, user)] += 1
        owners = {u: set(c) for u, c in answers.items()}
        print("ring hash owners:", Counter(next(iter(o)) for o in owners.values() if len(o) == 1))
        assert all(len(o) == 1 for o in owners.values()), owners  # every value: one instance, 10 of 10 requests
        assert len(set().union(*owners.values())) >= 2  # and the values are spread over the instances

        put(cp, strategy(ROUND_ROBIN))
        wait_for(lambda: not pinned(client, USERS[:1], 6), 15, what="round robin replacing the ring hash")
        spread = Counter(who(client, "user-0") for _ in range(300))
        print("round robin over 300 requests:", dict(spread))
        assert set(spread) == set(ZONES)
        assert all(abs(n - 100) <= 10 for n in spread.values()), spread  # each within ±10 % of its third


def test_locality_keeps_requests_in_the_client_zone(mesh, cp):
    with httpx.Client(timeout=3) as client:
        put(cp, strategy({"loadBalancer": {"type": "RoundRobin"}}))  # locality awareness on (the default)
        wait_for(lambda: {who(client) for _ in range(6)} == {"b1"}, 15, what="only the zone-1 instance answering")
        assert Counter(who(client) for _ in range(100)) == {"b1": 100}
        before = mesh["b1"].requests
        put(cp, strategy(ROUND_ROBIN))  # disabled again: every zone serves
        wait_for(lambda: {who(client) for _ in range(12)} == set(ZONES), 15, what="all zones answering")
        assert mesh["b1"].requests > before
