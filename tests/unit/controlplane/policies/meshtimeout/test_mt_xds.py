"""MeshTimeout's xDS step on its own: already-matched items in, timeouts on clusters, routes, HCMs and tcp_proxies
out, one golden per case, each also validated by the real Envoy; plus the sharing of edited shared resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.meshtimeout.api import effective, initial_policies, to_timeouts
from dpagent.controlplane.policies.meshtimeout.plugin import MeshTimeoutPlugin, TimeoutRules
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

TESTDATA = Path(__file__).parent / "testdata"
MESH = parse_mesh({"type": "Mesh", "name": "default",
                   "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})


def _dp(name: str, address: str, inbound: list[dict[str, Any]], outbound: list[dict[str, Any]]) -> Any:
    return parse_dataplane({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": address, "inbound": inbound, "outbound": outbound}})


WEB = _dp("web-1", "10.0.0.1", [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web",
                                                                             "kuma.io/protocol": "http"}}],
          [{"port": 10001, "tags": {"kuma.io/service": "backend"}}, {"port": 10002, "tags": {"kuma.io/service": "db"}}])
WEB2 = _dp("web-2", "10.0.0.4", WEB.networking.inbound and [{"port": 8080, "servicePort": 8081, "tags": {
    "kuma.io/service": "web", "kuma.io/protocol": "http"}}],
           [{"port": 10001, "tags": {"kuma.io/service": "backend"}}])
BACKEND = _dp("backend-1", "10.0.0.2", [{"port": 8080, "servicePort": 8081, "tags": {
    "kuma.io/service": "backend", "kuma.io/protocol": "http"}}], [])
DB = _dp("db-1", "10.0.0.3", [{"port": 5432, "servicePort": 5433, "tags": {
    "kuma.io/service": "db", "kuma.io/protocol": "tcp"}}], [])
DPS = [WEB, WEB2, BACKEND, DB]

MESH_REF, BACKEND_REF = TargetRef("Mesh"), TargetRef("MeshService", "backend")
DEFAULT = initial_policies("default")[0]["spec"]
DEFAULT_TO, DEFAULT_FROM = DEFAULT["to"][0]["default"], DEFAULT["from"][0]["default"]
SLOW = {"connectionTimeout": "2s", "idleTimeout": "20m",
        "http": {"requestTimeout": "1s", "streamIdleTimeout": "1m", "maxStreamDuration": "30s",
                 "maxConnectionDuration": "1h", "requestHeadersTimeout": "2s"}}


def item(conf: dict[str, Any], ref: TargetRef = MESH_REF, rank: int = 0) -> Item:
    return Item("p", rank, 0, conf, ref)


def inbound(conf: dict[str, Any]) -> Any:
    return effective(to_timeouts(conf))


# case → (proxy, rules); the input is already-matched rules, so the matcher is not under test here
CASES: dict[str, tuple[Any, TimeoutRules]] = {
    "mesh_default": (WEB, TimeoutRules(to=(item(DEFAULT_TO),), inbounds={"10.0.0.1:8080": inbound(DEFAULT_FROM)})),
    "backend_override": (WEB, TimeoutRules(to=(item(DEFAULT_TO), item(SLOW, BACKEND_REF, 1)))),
    "tcp_inbound": (DB, TimeoutRules(inbounds={"10.0.0.3:5432": inbound({"idleTimeout": "10m"})})),
}


def _apply(dp: Any, rules: TimeoutRules, ctx: MeshContext | None = None) -> ResourceSet:
    ctx = ctx or MeshContext(MESH, DPS)
    rs = generate(ctx, dp)
    MeshTimeoutPlugin().apply(rs, ctx, dp, rules)
    return rs


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    msgs = _apply(*CASES[case]).messages()
    resources = {t: msgs[t] for t in (CLUSTER, LISTENER, ROUTE) if t in msgs}
    assert_golden(resources_to_plain(resources), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    dp = CASES[case][0]
    envoy_accepts(_apply(*CASES[case]).messages(), tmp_path, f"spiffe://default/{dp.name.split('-')[0]}")


def test_same_timeouts_share_one_resource_and_a_client_override_does_not_leak() -> None:
    """Two clients with one effective conf toward `backend` get the very same serialised cluster and route; a third
    whose policy differs gets its own copy, and the others' copy keeps the mesh default."""
    ctx = MeshContext(MESH, DPS)
    mesh_wide = TimeoutRules(to=(item(DEFAULT_TO),))
    a = _apply(WEB, mesh_wide, ctx)
    b = _apply(WEB2, mesh_wide, ctx)
    c = _apply(WEB2, TimeoutRules(to=(item(DEFAULT_TO), item(SLOW, BACKEND_REF, 1))), ctx)
    for type_url, name in ((CLUSTER, "backend"), (ROUTE, "outbound:backend")):
        ea, eb, ec = a.get(type_url, name), b.get(type_url, name), c.get(type_url, name)
        assert ea is not None and eb is not None and ec is not None
        assert ea.shared is not None and ea.shared is eb.shared
        assert ec.shared is not ea.shared
    route = a.get(ROUTE, "outbound:backend").message.virtual_hosts[0].routes[0].route  # type: ignore[union-attr]
    slow = c.get(ROUTE, "outbound:backend").message.virtual_hosts[0].routes[0].route  # type: ignore[union-attr]
    assert (route.timeout.seconds, slow.timeout.seconds) == (15, 1)


def test_nothing_matched_leaves_resources_alone() -> None:
    ctx = MeshContext(MESH, DPS)
    rs = generate(ctx, WEB)
    before = {t: {n: m.SerializeToString() for n, m in by.items()} for t, by in rs.messages().items()}
    MeshTimeoutPlugin().apply(rs, ctx, WEB, TimeoutRules())
    assert {t: {n: m.SerializeToString() for n, m in by.items()} for t, by in rs.messages().items()} == before
