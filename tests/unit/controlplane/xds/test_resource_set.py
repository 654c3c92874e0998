"""ResourceSet semantics and sharing: shared resources stay one serialised object across proxies, editing one makes
a private copy, the context memo hands out one Resource per (key), and every resource carries its origin."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE, Resource
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

MESH = {"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dp(name: str, service: str, port: int, calls: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": service,
                                                                    "kuma.io/protocol": "http"}}],
        "outbound": [{"port": 30000 + port, "tags": {"kuma.io/service": calls}}]}}


DPS = [dp("web-1", "web", 1, "backend"), dp("web-2", "web", 2, "backend"), dp("backend-1", "backend", 3, "web")]


def test_shared_cluster_is_one_object_in_every_proxys_snapshot() -> None:
    state = build_mesh_state(MESH, DPS, {}, trust_bundle="PEM")
    a = proxy_snapshot(state, state.by_name["web-1"]).resources(CLUSTER)["backend"]
    b = proxy_snapshot(state, state.by_name["web-2"]).resources(CLUSTER)["backend"]
    assert a is b and a is state.shared[CLUSTER]["backend"]


def test_edit_copies_a_shared_resource_and_leaves_the_original_alone() -> None:
    shared = Resource("c", cluster_pb2.Cluster(name="c"), CLUSTER)
    rs = ResourceSet()
    rs.add(CLUSTER, "c", shared, Origin.OUTBOUND, service="svc")
    entry = rs.get(CLUSTER, "c")
    assert entry is not None and rs.for_snapshot()[CLUSTER]["c"] is shared
    msg = rs.edit(entry)
    msg.connect_timeout.seconds = 9  # type: ignore[attr-defined]
    assert shared.message.connect_timeout.seconds == 0 and entry.shared is None
    assert rs.for_snapshot()[CLUSTER]["c"] is msg


def test_duplicate_names_fail_loudly() -> None:
    rs = ResourceSet()
    rs.add(CLUSTER, "c", cluster_pb2.Cluster(name="c"), Origin.INBOUND)
    with pytest.raises(ValueError, match="generated twice"):
        rs.add(CLUSTER, "c", cluster_pb2.Cluster(name="c"), Origin.OUTBOUND)


def test_memo_hands_out_one_resource_per_key_so_equal_confs_share_bytes() -> None:
    """What a plugin that gives a service's cluster a conf does: key by (service, effective conf)."""
    ctx = MeshContext(parse_mesh(MESH))
    built: list[str] = []

    def build(conf: str) -> Any:
        built.append(conf)
        return cluster_pb2.Cluster(name=f"backend-{conf}")

    one = ctx.shared(("timeout", "backend", "5s"), CLUSTER, "backend", lambda: build("5s"))
    two = ctx.shared(("timeout", "backend", "5s"), CLUSTER, "backend", lambda: build("5s"))
    other = ctx.shared(("timeout", "backend", "9s"), CLUSTER, "backend", lambda: build("9s"))
    assert one is two and one is not other and built == ["5s", "9s"]


def test_every_resource_carries_its_origin_and_what_it_serves() -> None:
    parsed = [parse_dataplane(d) for d in DPS]
    ctx = MeshContext(parse_mesh(MESH), parsed, trust_bundle="PEM")
    rs = generate(ctx, parsed[0])
    got = {(e.type_url.rsplit(".", 1)[-1], e.name): (e.origin, e.inbound, e.service) for e in rs.entries()}
    assert got[("Listener", "inbound:10.0.0.1:1")] == (Origin.INBOUND, "10.0.0.1:1", "")
    assert got[("RouteConfiguration", "inbound:10.0.0.1:1")] == (Origin.INBOUND, "10.0.0.1:1", "")
    assert got[("Listener", "outbound:127.0.0.1:30001")] == (Origin.OUTBOUND, "", "backend")
    assert got[("Cluster", "backend")] == (Origin.OUTBOUND, "", "backend")
    assert got[("Secret", "mesh_ca")][0] == Origin.SECRETS
    assert [e.name for e in rs.entries(LISTENER, Origin.INBOUND)] == ["inbound:10.0.0.1:1"]
    assert [(e.name, i, key) for e, i, key in rs.inbound_chains(LISTENER)] == [
        ("inbound:10.0.0.1:1", 0, "10.0.0.1:1")]
    assert list(rs.messages()) == sorted(rs.types()) and ROUTE in rs.types()
