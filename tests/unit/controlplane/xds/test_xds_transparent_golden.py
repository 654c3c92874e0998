"""Golden tests for transparent-proxy dataplanes (capture listeners, VIP chains, passthrough, dynconf DNS table),
built through sync's real path (build_mesh_state → proxy_snapshot) and validated by the real Envoy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _xds_testlib import Pki, assert_golden, envoy_validate, install_identity, resources_to_plain, static_bootstrap
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.proxy import CLUSTER, ENDPOINT, LISTENER, proxy_warnings
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot

MTLS = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
GOLDEN_BUNDLE = "-----BEGIN CERTIFICATE-----\n(golden placeholder: the mesh trust bundle)\n-----END CERTIFICATE-----\n"


def mesh(mtls: bool | str) -> dict[str, Any]:
    """`mtls`: False, True (STRICT) or "permissive"."""
    if mtls == "permissive":
        return {"type": "Mesh", "name": "default", "mtls": {**MTLS, "backends": [{**MTLS["backends"][0],
                                                                                  "mode": "PERMISSIVE"}]}}
    return {"type": "Mesh", "name": "default", **({"mtls": MTLS} if mtls else {})}


def dp(name: str, address: str, service: str, protocol: str, port: int, *, tproxy: bool = True,
       reachable: tuple[str, ...] = (), outbound: tuple[str, ...] = ()) -> dict[str, Any]:
    net: dict[str, Any] = {"address": address, "inbound": [
        {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}]}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001,
                                      **({"reachableServices": list(reachable)} if reachable else {})}
    if outbound:
        net["outbound"] = [{"port": 10001 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbound)]
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": net}


def mtp(name: str, target: str, source: str, action: str = "Allow") -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": {
        "targetRef": {"kind": "MeshService", "name": target},
        "from": [{"targetRef": {"kind": "MeshService", "name": source}, "default": {"action": action}}]}}


def world(**web: Any) -> list[dict[str, Any]]:
    """web (tproxy, http) calls backend (http; one tproxy, one classic dataplane) and db (tcp)."""
    return [dp("web-1", "10.0.0.1", "web", "http", 8080, **web),
            dp("backend-1", "10.0.0.2", "backend", "http", 8080, tproxy=False),
            dp("backend-2", "10.0.0.3", "backend", "http", 8080),
            dp("db-1", "10.0.0.4", "db", "tcp", 5432),
            dp("legacy-1", "10.0.0.5", "legacy_app_svc_80", "tcp", 80)]


# case → (mtls, dataplanes, policies, proxy under test)
CASES: dict[str, tuple[bool | str, list[dict[str, Any]], list[dict[str, Any]], str]] = {
    "tproxy_mtls_on_all_services": (True, world(), [mtp("web-to-backend", "backend", "web")], "web-1"),
    "tproxy_mtls_on_tcp_inbound": (True, world(), [mtp("web-to-db", "db", "web")], "db-1"),
    "tproxy_mtls_on_reachable": (True, world(reachable=("backend", "legacy_app_svc_80", "missing")),
                                 [mtp("web-to-backend", "backend", "web")], "web-1"),
    "tproxy_mtls_off_reachable_with_outbounds": (False, world(reachable=("db",), outbound=("backend",)), [],
                                                 "web-1"),
    "tproxy_mtls_off_http_inbound": (False, world(), [], "backend-2"),
    "tproxy_mtls_permissive_tcp_inbound": ("permissive", world(), [mtp("web-to-db", "db", "web")], "db-1"),
}


def _generate(case: str, bundle: str = GOLDEN_BUNDLE) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    mtls, dps, policies, name = CASES[case]
    state = build_mesh_state(mesh(mtls), dps, {"MeshTrafficPermission": policies}, trust_bundle=bundle)
    snap = proxy_snapshot(state, state.by_name[name])
    resources = {t: {n: r.message for n, r in snap.resources(t).items()} for t in snap.types()}
    return resources, {"vips": dict(state.ctx.vips), "warnings": proxy_warnings(state.ctx, state.by_name[name])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources, extra = _generate(case)
    assert_golden({"resources": resources_to_plain(resources), **extra}, case)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    pki = Pki()
    resources, _ = _generate(case, bundle=pki.ca_pem.decode())
    install_identity(tmp_path, pki, "spiffe://default/test", 1)
    envoy_validate(static_bootstrap(resources, trust_bundle=pki.ca_pem.decode()), tmp_path)


def _dns(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    hcm = resources[LISTENER][names.DYNCONF_LISTENER].filter_chains[0].filters[0]
    cfg = hcm_pb2.HttpConnectionManager()
    hcm.typed_config.Unpack(cfg)
    body = cfg.route_config.virtual_hosts[0].routes[1].direct_response.body.inline_string
    return json.loads(body)


def test_reachable_services_limit_clusters_chains_and_dns() -> None:
    resources, extra = _generate("tproxy_mtls_on_reachable")
    assert set(resources[ENDPOINT]) == {"backend", "legacy_app_svc_80"}
    assert {"backend", "legacy_app_svc_80", names.INBOUND_PASSTHROUGH, names.OUTBOUND_PASSTHROUGH} <= \
        set(resources[CLUSTER])
    assert "db" not in resources[CLUSTER] and "web" not in resources[CLUSTER]
    chains = [c.name for c in resources[LISTENER][names.OUTBOUND_PASSTHROUGH].filter_chains]
    assert chains == ["outbound:backend:80", "outbound:backend:8080", "outbound:legacy_app_svc_80:80"]
    vips = extra["vips"]
    assert _dns(resources) == {"records": [
        {"name": "backend.mesh", "ips": [vips["backend"]]},
        {"name": "legacy.app.svc.80.mesh", "ips": [vips["legacy_app_svc_80"]]},
        {"name": "legacy_app_svc_80.mesh", "ips": [vips["legacy_app_svc_80"]]}], "ttl": 30}


def test_tproxy_has_no_per_inbound_or_outbound_listeners() -> None:
    resources, extra = _generate("tproxy_mtls_off_reachable_with_outbounds")
    assert sorted(resources[LISTENER]) == sorted([names.DYNCONF_LISTENER, names.INBOUND_PASSTHROUGH,
                                                  names.OUTBOUND_PASSTHROUGH])
    assert any("outbound(s) ignored" in w for w in extra["warnings"])
    assert set(resources[ENDPOINT]) == {"db"}  # reachableServices, not the ignored outbound


def test_raw_endpoint_addresses_route_to_the_service_cluster() -> None:
    resources, _ = _generate("tproxy_mtls_on_all_services")
    by_name = {c.name: c for c in resources[LISTENER][names.OUTBOUND_PASSTHROUGH].filter_chains}
    match = by_name["outbound:backend:8080"].filter_chain_match
    ips = [r.address_prefix for r in match.prefix_ranges]
    assert match.destination_port.value == 8080
    assert {"10.0.0.2", "10.0.0.3"} <= set(ips)
    assert all(r.prefix_len.value == 32 for r in match.prefix_ranges)


def test_shared_listeners_are_one_resource_across_proxies() -> None:
    mtls, dps, policies, _ = CASES["tproxy_mtls_on_all_services"]
    state = build_mesh_state(mesh(mtls), dps, {"MeshTrafficPermission": policies}, trust_bundle=GOLDEN_BUNDLE)
    a = proxy_snapshot(state, state.by_name["web-1"]).resources(LISTENER)
    b = proxy_snapshot(state, state.by_name["db-1"]).resources(LISTENER)
    for name in (names.OUTBOUND_PASSTHROUGH, names.DYNCONF_LISTENER):
        assert a[name] is b[name]
    assert a[names.INBOUND_PASSTHROUGH] is not b[names.INBOUND_PASSTHROUGH]


def test_vips_are_stable_across_rebuilds() -> None:
    mtls, dps, _, _ = CASES["tproxy_mtls_on_all_services"]
    first = build_mesh_state(mesh(mtls), dps, {}, vips={"db": "240.0.0.9"}).ctx.vips
    assert first["db"] == "240.0.0.9"
    again = build_mesh_state(mesh(mtls), dps[:-1], {}, vips=first).ctx.vips
    assert again == {k: v for k, v in first.items() if k != "legacy_app_svc_80"}
