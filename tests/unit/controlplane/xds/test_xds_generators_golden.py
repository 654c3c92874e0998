"""Golden tests for the shared and per-proxy generators, each config also validated by the real Envoy."""

from __future__ import annotations

from typing import Any

import pytest
from _xds_testlib import Pki, assert_golden, envoy_validate, install_identity, resources_to_plain, static_bootstrap

from dpagent.controlplane.xds.proxy import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    MeshContext,
    generate_proxy,
    generate_shared,
    merge,
    proxy_warnings,
)
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

MTLS = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}


def mesh(mtls: bool | str) -> dict[str, Any]:
    """`mtls`: False, True (STRICT) or "permissive"."""
    if mtls == "permissive":
        return {"type": "Mesh", "name": "default", "mtls": {**MTLS, "backends": [{**MTLS["backends"][0],
                                                                                  "mode": "PERMISSIVE"}]}}
    return {"type": "Mesh", "name": "default", **({"mtls": MTLS} if mtls else {})}


def dp(name: str, address: str, service: str, protocol: str, port: int = 8080, outbound: tuple[str, ...] = (),
       ready: bool = True, **tags: str) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": port, "servicePort": port + 1,
                               "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **tags}}
    if not ready:
        inbound["health"] = {"ready": False}
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": address, "inbound": [inbound],
        "outbound": [{"port": 10001 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbound)]}}


def mtp(name: str, target: dict[str, Any], *rules: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": {
        "targetRef": target, "from": [{"targetRef": ref, "default": {"action": action}} for ref, action in rules]}}


MESH_REF = {"kind": "Mesh"}
WEB = {"kind": "MeshService", "name": "web"}
BACKEND = {"kind": "MeshService", "name": "backend"}

# case → (mtls, dataplanes, policies, proxy under test)
CASES: dict[str, tuple[bool | str, list[dict[str, Any]], list[dict[str, Any]], str]] = {
    "mtls_off_http": (False, [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                              dp("backend-1", "10.0.0.2", "backend", "http")], [], "web-1"),
    "mtls_on_http_allow": (True, [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                                  dp("backend-1", "10.0.0.2", "backend", "http")],
                           [mtp("allow-web", BACKEND, (WEB, "Allow"))], "backend-1"),
    "mtls_on_http_deny": (True, [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                                 dp("backend-1", "10.0.0.2", "backend", "http")],
                          [mtp("allow-all", MESH_REF, (MESH_REF, "Allow")),
                           mtp("deny-web", BACKEND, (WEB, "Deny"))], "backend-1"),
    "mtls_on_default_deny": (True, [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                                    dp("backend-1", "10.0.0.2", "backend", "http")], [], "backend-1"),
    "mtls_on_tcp": (True, [dp("web-1", "10.0.0.1", "web", "tcp", outbound=("db",)),
                           dp("db-1", "10.0.0.3", "db", "tcp", port=5432)],
                    [mtp("allow-web", {"kind": "MeshService", "name": "db"}, (WEB, "Allow"))], "db-1"),
    "mtls_on_grpc": (True, [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                            dp("backend-1", "10.0.0.2", "backend", "grpc", port=9090)],
                     [mtp("allow-all", MESH_REF, (MESH_REF, "AllowWithShadowDeny"))], "web-1"),
    "mtls_on_subset_rules": (True, [dp("web-1", "10.0.0.1", "web", "http", version="v1"),
                                    dp("admin-1", "10.0.0.4", "admin", "http", version="v2"),
                                    dp("batch-1", "10.0.0.5", "batch", "tcp", version="v2"),
                                    dp("backend-1", "10.0.0.2", "backend", "http")],
                             [mtp("subset", BACKEND, ({"kind": "MeshSubset", "tags": {"version": "v2"}}, "Allow"),
                                  ({"kind": "MeshService", "name": "batch"}, "Deny"),
                                  ({"kind": "MeshSubset", "tags": {"version": "v9"}}, "Allow"))],
                             "backend-1"),
    "unhealthy_endpoint": (False, [dp("web-1", "10.0.0.1", "web", "tcp", outbound=("backend",)),
                                   dp("backend-1", "10.0.0.2", "backend", "tcp"),
                                   dp("backend-2", "10.0.0.3", "backend", "tcp", ready=False)], [], "web-1"),
    "mtls_permissive_http": ("permissive", [dp("web-1", "10.0.0.1", "web", "http", outbound=("backend",)),
                                            dp("backend-1", "10.0.0.2", "backend", "http")],
                             [mtp("allow-web", BACKEND, (WEB, "Allow"))], "backend-1"),
    "mtls_permissive_tcp": ("permissive", [dp("web-1", "10.0.0.1", "web", "tcp", outbound=("db",)),
                                           dp("db-1", "10.0.0.3", "db", "tcp", port=5432)],
                            [mtp("allow-web", {"kind": "MeshService", "name": "db"}, (WEB, "Allow"))], "db-1"),
}


GOLDEN_BUNDLE = "-----BEGIN CERTIFICATE-----\n(golden placeholder: the mesh trust bundle)\n-----END CERTIFICATE-----\n"


def _generate(case: str, bundle: str = GOLDEN_BUNDLE) -> tuple[dict[str, Any], list[str]]:
    mtls, dps, policies, name = CASES[case]
    parsed = [parse_dataplane(d) for d in dps]
    ctx = MeshContext(parse_mesh(mesh(mtls)), parsed, {"MeshTrafficPermission": policies}, trust_bundle=bundle)
    proxy = next(d for d in parsed if d.name == name)
    shared = generate_shared(ctx)
    return merge(shared, generate_proxy(ctx, proxy, shared=shared)), proxy_warnings(ctx, proxy)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources, warnings = _generate(case)
    assert_golden({"resources": resources_to_plain(resources), "warnings": warnings}, case)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    pki = Pki()
    resources, _ = _generate(case, bundle=pki.ca_pem.decode())
    install_identity(tmp_path, pki, "spiffe://default/test", 1)
    envoy_validate(static_bootstrap(resources), tmp_path)


def test_deterministic_and_shared_is_proxy_independent() -> None:
    a, _ = _generate("mtls_on_http_allow")
    b, _ = _generate("mtls_on_http_allow")
    assert {t: {n: m.SerializeToString(deterministic=True) for n, m in by.items()} for t, by in a.items()} == \
           {t: {n: m.SerializeToString(deterministic=True) for n, m in by.items()} for t, by in b.items()}
    assert set(a) == {CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET}
    assert a[SECRET]["mesh_ca"].validation_context.trusted_ca.inline_string == GOLDEN_BUNDLE


def test_unhealthy_endpoint_excluded() -> None:
    resources, _ = _generate("unhealthy_endpoint")
    cla = resources[ENDPOINT]["backend"]
    addrs = [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints]
    assert addrs == ["10.0.0.2"]


def test_permissive_inbound_splits_mesh_mtls_from_plaintext_and_rbac_guards_only_the_mesh_chain() -> None:
    resources, _ = _generate("mtls_permissive_tcp")
    listener = resources[LISTENER]["inbound:10.0.0.3:5432"]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    mesh_chain, plain = listener.filter_chains
    assert (mesh_chain.filter_chain_match.transport_protocol, list(mesh_chain.filter_chain_match.application_protocols),
            mesh_chain.HasField("transport_socket")) == ("tls", ["kuma"], True)
    assert (plain.filter_chain_match.transport_protocol, plain.HasField("transport_socket")) == ("raw_buffer", False)
    assert [f.name for f in mesh_chain.filters][:2] == ["envoy.filters.network.rbac"] * 2
    assert [f.name for f in plain.filters] == ["envoy.filters.network.tcp_proxy"]
    strict, _ = _generate("mtls_on_tcp")
    assert len(strict[LISTENER]["inbound:10.0.0.3:5432"].filter_chains) == 1


def test_staging_keeps_clients_plaintext_and_inbounds_permissive_and_users_cannot_set_it() -> None:
    """While mTLS is being turned on (the CP sets `mtlsStaging` until every proxy holds a mesh certificate)."""
    from dpagent.model.mesh import decode_mesh, validate_mesh

    _, dps, policies, _ = CASES["mtls_on_tcp"]
    parsed = [parse_dataplane(d) for d in dps]
    staged = decode_mesh({**mesh(True), "mtlsStaging": True})
    ctx = MeshContext(staged, parsed, {"MeshTrafficPermission": policies}, trust_bundle=GOLDEN_BUNDLE)
    web, db = (next(d for d in parsed if d.name == n) for n in ("web-1", "db-1"))
    web_res = merge(generate_shared(ctx), generate_proxy(ctx, web, shared=generate_shared(ctx)))
    assert not web_res[CLUSTER]["db"].HasField("transport_socket"), "a client called over mTLS while staging"
    db_res = generate_proxy(ctx, db, shared=generate_shared(ctx))
    assert [c.name for c in db_res[LISTENER]["inbound:10.0.0.3:5432"].filter_chains] == [
        "inbound:10.0.0.3:5432", "inbound:10.0.0.3:5432:plaintext"]
    assert ("mtlsStaging", "unknown field") in [(p, m.split(" (")[0]) for p, m in
                                                validate_mesh({**mesh(True), "mtlsStaging": True})]
