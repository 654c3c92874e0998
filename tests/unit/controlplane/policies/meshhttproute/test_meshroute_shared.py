"""The pieces both route policies share: subset cluster names, tag-based endpoint selection, backend clusters,
listener edits; plus the HTTP builder's resolver hook and mirror fractions."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from envoy.type.v3 import percent_pb2

from dpagent.controlplane.policies.meshhttproute.api import Rule
from dpagent.controlplane.policies.meshhttproute.ordering import route_entries
from dpagent.controlplane.policies.meshhttproute.routes import fraction, route_configuration
from dpagent.controlplane.policies.meshroute import names
from dpagent.controlplane.policies.meshroute.backends import backend_resources, resolve_legacy, subset_endpoints
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.model.dataplane import decode_dataplane


def test_subset_cluster_names_are_stable_and_distinct() -> None:
    a = names.subset_cluster("backend", {"version": "v2", "zone": "east"})
    assert a == names.subset_cluster("backend", {"zone": "east", "version": "v2"})  # order does not matter
    assert a.startswith("backend-") and len(a) == len("backend-") + 16
    assert a != names.subset_cluster("backend", {"version": "v2"})
    # tags that only restate the service are the whole service
    assert names.subset_cluster("backend", {"kuma.io/service": "backend"}) == "backend"
    assert names.subset_cluster("backend", {}) == "backend"


def test_resolve_legacy() -> None:
    assert resolve_legacy(BackendRef(kind="MeshService", name="b")) == "b"
    assert resolve_legacy(BackendRef(kind="MeshServiceSubset", name="b", tags={"v": "1"})) == \
        names.subset_cluster("b", {"v": "1"})
    # real resources this CP does not have yet
    for ref in (BackendRef(kind="MeshService", name="b", port=80), BackendRef(kind="MeshService", name="b",
                                                                             section_name="http"),
                BackendRef(kind="MeshExternalService", name="x"), BackendRef(kind="MeshMultiZoneService", name="m",
                                                                             port=80)):
        assert resolve_legacy(ref) is None


def dp(name: str, dp_address: str, **inbound: Any) -> Any:
    return decode_dataplane({"mesh": "default", "name": name, "networking": {"address": dp_address,
                                                                             "inbound": [inbound]}})


DPS = [dp("a", "10.0.0.1", port=80, tags={"kuma.io/service": "s", "v": "1"}),
       dp("b", "10.0.0.2", port=80, tags={"kuma.io/service": "s", "v": "2"}),
       dp("c", "10.0.0.3", port=80, tags={"kuma.io/service": "s", "v": "2"}, health={"ready": False}),
       dp("d", "10.0.0.4", port=80, tags={"kuma.io/service": "s", "v": "2"}, state="Ignored"),
       dp("e", "host.example", port=80, tags={"kuma.io/service": "s", "v": "2"}),
       dp("f", "10.0.0.6", port=81, address="10.0.0.60", tags={"kuma.io/service": "s", "v": "2", "x": "y"}),
       dp("g", "10.0.0.7", port=80, tags={"kuma.io/service": "t", "v": "2"})]


def test_subset_endpoints_select_by_every_tag_and_only_ready_ips() -> None:
    assert subset_endpoints(DPS, "s", {"v": "2"}) == [("10.0.0.2", 80), ("10.0.0.60", 81)]
    assert subset_endpoints(DPS, "s", {"v": "2", "x": "y"}) == [("10.0.0.60", 81)]
    assert subset_endpoints(DPS, "s", {}) == [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.60", 81)]
    assert subset_endpoints(DPS, "s", {"v": "9"}) == []


def test_backend_resources_dedupe_protocol_and_mtls() -> None:
    refs = [BackendRef(kind="MeshServiceSubset", name="s", tags={"v": "2"}),
            BackendRef(kind="MeshServiceSubset", name="s", tags={"v": "2"}, weight=7),
            BackendRef(kind="MeshExternalService", name="x")]
    clusters, cla = backend_resources(refs, DPS, mesh="default", mtls=True, protocols={"s": "grpc"})
    (name,) = clusters
    assert name == names.subset_cluster("s", {"v": "2"}) and set(cla) == {name}
    c = clusters[name]
    assert c.transport_socket.name  # mTLS: the subset verifies the service's identity like the whole service
    assert c.typed_extension_protocol_options  # gRPC → HTTP/2 upstream
    plain, _ = backend_resources(refs[:1], DPS, mesh="default", mtls=False, protocols={})
    assert not plain[name].transport_socket.name and not plain[name].typed_extension_protocol_options


def test_external_backend_rewrites_host_and_resolver_is_pluggable() -> None:
    rule = msgspec.convert({"matches": [{"path": {"type": "Exact", "value": "/x"}}], "default": {"backendRefs": [
        {"kind": "MeshExternalService", "name": "httpbin"}]}}, Rule)
    entries = route_entries([rule])
    resolved = route_configuration("r", "s", entries, "s", resolve=lambda ref: f"ext-{ref.name}")
    route = resolved.virtual_hosts[0].routes[0]
    assert route.route.cluster == "ext-httpbin" and route.route.auto_host_rewrite.value
    dropped = route_configuration("r", "s", entries, "s")  # the default resolver cannot reach it: route skipped
    assert [r.match.prefix for r in dropped.virtual_hosts[0].routes] == ["/"]


FP = percent_pb2.FractionalPercent


@pytest.mark.parametrize(("pct", "num", "den"), [
    (10, 10, FP.HUNDRED), ("100", 100, FP.HUNDRED), ("99.9", 9990, FP.TEN_THOUSAND), ("12.25", 1225, FP.TEN_THOUSAND),
    ("0.125", 1250, FP.MILLION), ("33.3333", 333333, FP.MILLION)])
def test_mirror_fraction(pct: Any, num: int, den: int) -> None:
    f = fraction(pct)
    assert (f.numerator, f.denominator) == (num, den)
