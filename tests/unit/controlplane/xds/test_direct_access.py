"""Direct access (`transparentProxying.directAccessServices`): per-endpoint listeners handed over by the outbound
capture listener, one ORIGINAL_DST `direct_access` cluster (mTLS to any mesh identity when the mesh has mTLS).
Goldens built through sync's real path, validated by the real Envoy; the reach rule checked against a rebuild."""

from __future__ import annotations

from typing import Any

import pytest
from _xds_testlib import Pki, assert_golden, envoy_validate, install_identity, resources_to_plain, static_bootstrap
from test_xds_transparent_golden import GOLDEN_BUNDLE, dp, mesh

from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.proxy import CLUSTER, LISTENER
from dpagent.controlplane.xds.sync import XdsSync, build_mesh_state, proxy_snapshot


def with_direct(doc: dict[str, Any], services: list[str]) -> dict[str, Any]:
    doc["networking"]["transparentProxying"]["directAccessServices"] = services
    return doc


def world(direct: list[str]) -> list[dict[str, Any]]:
    """web (tproxy) lists `direct`; backend has two endpoints (one with two inbounds), db one."""
    backend = dp("backend-1", "10.0.0.2", "backend", "http", 8080)
    backend["networking"]["inbound"].append({"port": 9090, "tags": {"kuma.io/service": "backend-admin"}})
    return [with_direct(dp("web-1", "10.0.0.1", "web", "http", 8080), direct), backend,
            dp("backend-2", "10.0.0.3", "backend", "http", 8080), dp("db-1", "10.0.0.4", "db", "tcp", 5432),
            dp("other-1", "10.0.0.5", "other", "tcp", 80)]


CASES: dict[str, tuple[bool, list[str]]] = {
    "direct_access_mtls_on_one_service": (True, ["backend"]),
    "direct_access_mtls_off_all_services": (False, ["*"]),
}


def _generate(case: str, bundle: str = GOLDEN_BUNDLE) -> dict[str, dict[str, Any]]:
    mtls, direct = CASES[case]
    state = build_mesh_state(mesh(mtls), world(direct), {}, trust_bundle=bundle)
    snap = proxy_snapshot(state, state.by_name["web-1"])
    return {t: {n: r.message for n, r in snap.resources(t).items()} for t in snap.types()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources = _generate(case)
    direct = {t: {n: m for n, m in resources[t].items() if n.startswith(names.DIRECT_ACCESS_CLUSTER)}
              for t in (LISTENER, CLUSTER)}
    capture = resources[LISTENER][names.OUTBOUND_PASSTHROUGH]
    assert_golden({"resources": resources_to_plain(direct),
                   "captureUsesOriginalDst": capture.use_original_dst.value}, case)


def test_endpoints_are_the_listed_services_of_other_dataplanes() -> None:
    one = _generate("direct_access_mtls_on_one_service")
    assert sorted(n for n in one[LISTENER] if n.startswith("direct_access")) == [
        "direct_access_10.0.0.2:8080", "direct_access_10.0.0.3:8080"]  # not backend-admin's 9090, not web itself
    assert one[CLUSTER][names.DIRECT_ACCESS_CLUSTER].HasField("transport_socket")
    everything = _generate("direct_access_mtls_off_all_services")
    assert sorted(n for n in everything[LISTENER] if n.startswith("direct_access")) == [
        "direct_access_10.0.0.2:8080", "direct_access_10.0.0.2:9090", "direct_access_10.0.0.3:8080",
        "direct_access_10.0.0.4:5432", "direct_access_10.0.0.5:80"]
    assert not everything[CLUSTER][names.DIRECT_ACCESS_CLUSTER].HasField("transport_socket")


def test_proxies_without_direct_access_keep_the_shared_capture_listener_unchanged() -> None:
    dps = world(["backend"])
    dps.append(with_direct(dp("web-2", "10.0.0.6", "web", "http", 8080), ["backend"]))
    state = build_mesh_state(mesh(True), dps, {}, trust_bundle=GOLDEN_BUNDLE)
    web1, web2, db = (proxy_snapshot(state, state.by_name[n]).resources(LISTENER) for n in ("web-1", "web-2", "db-1"))
    assert web1[names.OUTBOUND_PASSTHROUGH] is web2[names.OUTBOUND_PASSTHROUGH]  # one copy for both
    assert web1[names.OUTBOUND_PASSTHROUGH].message.use_original_dst.value is True
    assert db[names.OUTBOUND_PASSTHROUGH].message.use_original_dst.value is False
    assert not any(n.startswith("direct_access") for n in db)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    pki = Pki()
    resources = _generate(case, bundle=pki.ca_pem.decode())
    install_identity(tmp_path, pki, "spiffe://default/test", 1)
    envoy_validate(static_bootstrap(resources, trust_bundle=pki.ca_pem.decode()), tmp_path)


async def test_a_new_endpoint_reaches_the_proxies_that_access_its_service_directly() -> None:
    """web-1 reaches only db (reachableServices) but accesses backend directly: a new backend endpoint must rebuild
    web-1, which the service-consumer rule alone would miss."""
    store = await MemoryStore.open()
    try:
        resources = Resources(store)
        await resources.apply(mesh(False))
        web = dp("web-1", "10.0.0.1", "web", "http", 8080, reachable=("db",))
        for doc in (with_direct(web, ["backend"]), dp("db-1", "10.0.0.4", "db", "tcp", 5432),
                    dp("backend-1", "10.0.0.2", "backend", "http", 8080)):
            await resources.apply(doc)
        sync = XdsSync(store, cache=None)
        state = await sync._rebuild("default")
        assert state is not None
        await resources.apply(dp("backend-2", "10.0.0.3", "backend", "http", 8080))
        state, reached = await sync._change("default", {("Dataplane", "backend-2")})
        assert state is not None and reached is not None and "web-1" in reached
        assert "direct_access_10.0.0.3:8080" in proxy_snapshot(state, state.by_name["web-1"]).resources(LISTENER)
    finally:
        await store.close()
