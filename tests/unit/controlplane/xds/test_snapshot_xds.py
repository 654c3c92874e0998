"""Snapshot: resources serialised once, content-hash versions, framing that protobuf parses back."""

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import duration_pb2
from google.protobuf.internal.encoder import _VarintBytes

from dpagent.controlplane.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Resource,
    Snapshot,
    encode_response,
    response_rank,
    varint,
)


def cluster(name: str, timeout: int = 5) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=timeout))


def test_resource_serialises_once_and_packs_any():
    res = Resource("a", cluster("a"))
    assert res.type_url == CLUSTER
    assert res.any.type_url == CLUSTER
    assert cluster_pb2.Cluster.FromString(res.any.value) == cluster("a")
    assert res.any is res.any


def test_versions_are_content_hashes_independent_of_order_and_object_identity():
    a = Snapshot.build({CLUSTER: {"a": cluster("a"), "b": cluster("b")}})
    b = Snapshot.build({CLUSTER: {"b": cluster("b"), "a": cluster("a")}})
    c = Snapshot.build({CLUSTER: {"a": cluster("a"), "b": cluster("b", timeout=6)}})
    assert a.version(CLUSTER) == b.version(CLUSTER)
    assert a == b
    assert a.version(CLUSTER) != c.version(CLUSTER)
    assert a.version(LISTENER) is None


def test_empty_type_is_present_with_a_version():
    snap = Snapshot.build({LISTENER: {}})
    assert LISTENER in snap
    assert snap.version(LISTENER)
    assert snap.select(LISTENER, None)[1] == b""


def test_shared_resource_is_the_same_object_in_every_snapshot():
    shared = Resource("svc", cluster("svc"))
    snaps = [Snapshot.build({CLUSTER: {"svc": shared}}) for _ in range(3)]
    assert all(s.resources(CLUSTER)["svc"] is shared for s in snaps)


def test_misfiled_resource_is_rejected():
    with pytest.raises(ValueError, match="filed under"):
        Snapshot({CLUSTER: {"x": Resource("y", cluster("y"))}})


def test_select_subset_and_framing_round_trip():
    clas = {n: endpoint_pb2.ClusterLoadAssignment(cluster_name=n) for n in ("a", "b", "c")}
    snap = Snapshot.build({ENDPOINT: clas})
    version, body, names = snap.select(ENDPOINT, frozenset({"a", "c", "zz"}))
    assert names == {"a", "c"}
    assert version != snap.version(ENDPOINT)
    resp = discovery_pb2.DiscoveryResponse.FromString(encode_response(ENDPOINT, version, body, "7"))
    assert resp.version_info == version and resp.nonce == "7" and resp.type_url == ENDPOINT
    got = [endpoint_pb2.ClusterLoadAssignment.FromString(a.value).cluster_name for a in resp.resources]
    assert got == ["a", "c"]
    # asking for a superset of what exists is the full set, with the snapshot's own version
    full_version, _, full_names = snap.select(ENDPOINT, frozenset({"a", "b", "c", "d"}))
    assert full_version == snap.version(ENDPOINT) and full_names == {"a", "b", "c"}


def test_varint_matches_protobuf():
    for n in (0, 1, 127, 128, 300, 2**21, 2**35):
        assert varint(n) == _VarintBytes(n)


def test_response_order_puts_clusters_first_and_unknown_last():
    types = ["zzz.Unknown", ROUTE, LISTENER, ENDPOINT, CLUSTER]
    assert sorted(types, key=response_rank) == [CLUSTER, ENDPOINT, LISTENER, ROUTE, "zzz.Unknown"]
