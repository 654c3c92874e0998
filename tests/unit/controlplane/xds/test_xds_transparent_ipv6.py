"""IPv6 under the transparent proxy: the capture listeners also listen on [::] unless the Dataplane says
`ipFamilyMode: IPv4`, IPv6 endpoint addresses get chains like IPv4 ones, and the inbound passthrough binds ::6 for
IPv6 destinations. The e2e (tests/e2e/test_tproxy_ipv6.py) proves the same on a real kernel."""

from __future__ import annotations

from typing import Any

import pytest
from _xds_testlib import Pki, envoy_validate, install_identity, static_bootstrap

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.proxy import CLUSTER, LISTENER
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot

MESH = {"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def dp(name: str, address: str, service: str, port: int, mode: str | None = None) -> dict[str, Any]:
    tp: dict[str, Any] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    if mode is not None:
        tp["ipFamilyMode"] = mode
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": address, "transparentProxying": tp,
        "inbound": [{"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]}}


def snapshot(dps: list[dict[str, Any]], name: str, bundle: str = "bundle") -> dict[str, dict[str, Any]]:
    state = build_mesh_state(MESH, dps, {}, trust_bundle=bundle)
    snap = proxy_snapshot(state, state.by_name[name])
    return {t: {n: r.message for n, r in snap.resources(t).items()} for t in snap.types()}


def extra_addresses(listener: Any) -> list[tuple[str, int]]:
    return [(a.address.socket_address.address, a.address.socket_address.port_value)
            for a in listener.additional_addresses]


V6_WORLD = [dp("web-1", "fd00::1", "web", 9090), dp("backend-1", "fd00::2", "backend", 8080),
            dp("backend-2", "10.0.0.3", "backend", 8080)]


@pytest.mark.parametrize("mode", [None, "DualStack", "dualstack"])
def test_capture_listeners_also_listen_on_ipv6_by_default(mode: str | None) -> None:
    listeners = snapshot([dp("web-1", "10.0.0.1", "web", 9090, mode)], "web-1")[LISTENER]
    for name, port in ((names.INBOUND_PASSTHROUGH, 15006), (names.OUTBOUND_PASSTHROUGH, 15001)):
        assert listeners[name].address.socket_address.address == "0.0.0.0"
        assert extra_addresses(listeners[name]) == [("::", port)]
        assert not listeners[name].additional_addresses[0].address.socket_address.ipv4_compat


@pytest.mark.parametrize("mode", ["IPv4", "ipv4"])
def test_ipv4_family_mode_keeps_the_listeners_ipv4_only(mode: str) -> None:
    listeners = snapshot([dp("web-1", "10.0.0.1", "web", 9090, mode)], "web-1")[LISTENER]
    assert extra_addresses(listeners[names.INBOUND_PASSTHROUGH]) == []
    assert extra_addresses(listeners[names.OUTBOUND_PASSTHROUGH]) == []


def test_shared_outbound_capture_is_per_family_mode() -> None:
    """Two proxies with the same reachable set but different family modes must not share one listener."""
    dps = [dp("a-1", "10.0.0.1", "a", 9090), dp("b-1", "10.0.0.2", "b", 9090, "IPv4")]
    state = build_mesh_state(MESH, dps, {}, trust_bundle="bundle")
    a = proxy_snapshot(state, state.by_name["a-1"]).resources(LISTENER)[names.OUTBOUND_PASSTHROUGH]
    b = proxy_snapshot(state, state.by_name["b-1"]).resources(LISTENER)[names.OUTBOUND_PASSTHROUGH]
    assert extra_addresses(a.message) and not extra_addresses(b.message)


def test_ipv6_endpoint_addresses_get_a_chain_to_the_service_cluster() -> None:
    listener = snapshot(V6_WORLD, "web-1")[LISTENER][names.OUTBOUND_PASSTHROUGH]
    chain = {c.name: c for c in listener.filter_chains}["outbound:backend:8080"]
    ranges = {(r.address_prefix, r.prefix_len.value) for r in chain.filter_chain_match.prefix_ranges}
    assert {("fd00::2", 128), ("10.0.0.3", 32)} <= ranges


def test_inbound_passthrough_binds_the_source_of_the_destination_family() -> None:
    cluster = snapshot(V6_WORLD, "backend-1")[CLUSTER][names.INBOUND_PASSTHROUGH]
    bind = cluster.upstream_bind_config
    assert bind.source_address.address == "127.0.0.6"
    assert [a.address.address for a in bind.extra_source_addresses] == ["::6"]


@pytest.mark.envoy
def test_envoy_accepts_an_ipv6_mesh(tmp_path: Any) -> None:
    pki = Pki()
    resources = snapshot(V6_WORLD, "backend-1", bundle=pki.ca_pem.decode())
    install_identity(tmp_path, pki, "spiffe://default/backend", 1)
    envoy_validate(static_bootstrap(resources, trust_bundle=pki.ca_pem.decode()), tmp_path)
