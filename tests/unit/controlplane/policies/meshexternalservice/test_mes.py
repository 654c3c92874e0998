"""MeshExternalService: validation (every violation with its path, Kuma's YAML accepted), what a transparent and a
classic proxy get (goldens through sync's real path, loaded by the real Envoy), and policies whose `to[]` names it
(MeshTimeout, MeshRetry, MeshAccessLog) landing on its cluster, route and chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from unit.controlplane.xds._xds_testlib import (
    Pki,
    assert_golden,
    envoy_validate,
    install_identity,
    resources_to_plain,
    static_bootstrap,
)

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshexternalservice.api import allocate_vips, validate
from dpagent.controlplane.policies.meshexternalservice.plugin import MeshExternalServicePlugin
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.context import build_proxy
from dpagent.controlplane.xds.proxy import CLUSTER, LISTENER, ROUTE, proxy_warnings
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot
from dpagent.errors import ValidationError

TESTDATA = Path(__file__).parent / "testdata"
CA_PEM = "-----BEGIN CERTIFICATE-----\n(golden placeholder: the external CA)\n-----END CERTIFICATE-----\n"

KUMA_DOCS_EXAMPLE = """
type: MeshExternalService
name: mes-tls
mesh: default
spec:
  match:
    type: HostnameGenerator
    port: 443
    protocol: http
  endpoints:
    - address: httpbin.org
      port: 443
  tls:
    enabled: true
    allowRenegotiation: false
    version: {min: TLS12, max: TLS13}
    verification:
      mode: Secured
      serverName: httpbin.org
      subjectAltNames:
        - {type: Exact, value: httpbin.org}
        - {type: Prefix, value: "httpbin"}
      caCert:
        inline: dGVzdA==
"""


def mes(name: str, endpoints: list[dict[str, Any]], *, port: int = 443, protocol: str = "http",
        tls: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"match": {"type": "HostnameGenerator", "port": port, "protocol": protocol},
                            "endpoints": endpoints}
    if tls is not None:
        spec["tls"] = tls
    return {"type": "MeshExternalService", "mesh": "default", "name": name, "spec": spec}


def dp(name: str, address: str, *, tproxy: bool = True, outbound: list[dict[str, Any]] | None = None
       ) -> dict[str, Any]:
    net: dict[str, Any] = {"address": address, "inbound": [
        {"port": 8080, "tags": {"kuma.io/service": name.split("-")[0], "kuma.io/protocol": "http"}}]}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    if outbound:
        net["outbound"] = outbound
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": net}


HTTPBIN = mes("httpbin", [{"address": "10.9.0.1", "port": 8443}], tls={
    "enabled": True, "verification": {"serverName": "ext.test", "caCert": {"inlineString": CA_PEM}}})
PG = mes("pg", [{"address": "db.example.com", "port": 5432}, {"address": "db2.example.com", "port": 5432,
                                                                "priority": 5}], port=5432, protocol="tcp")
GRPC = mes("api", [{"address": "10.9.0.2", "port": 9000}], port=9000, protocol="grpc", tls={
    "enabled": True, "version": {"min": "TLS13"}, "verification": {"mode": "SkipCA", "subjectAltNames": [
        {"type": "Prefix", "value": "api."}]}})
WORLD = [dp("web-1", "10.0.0.1"), dp("backend-1", "10.0.0.2"),
         dp("classic-1", "10.0.0.3", tproxy=False, outbound=[
             {"port": 10001, "backendRef": {"kind": "MeshExternalService", "name": "httpbin"}},
             {"port": 10002, "tags": {"kuma.io/service": "backend"}}])]


def timeout_to(name: str) -> dict[str, Any]:
    return {"type": "MeshTimeout", "mesh": "default", "name": "to-ext", "spec": {"to": [
        {"targetRef": {"kind": "MeshExternalService", "name": name},
         "default": {"connectionTimeout": "3s", "http": {"requestTimeout": "7s"}}}]}}


def retry_to(name: str) -> dict[str, Any]:
    return {"type": "MeshRetry", "mesh": "default", "name": "retry-ext", "spec": {"to": [
        {"targetRef": {"kind": "MeshExternalService", "name": name},
         "default": {"http": {"numRetries": 4}, "tcp": {"maxConnectAttempt": 3}}}]}}


def log_to(name: str) -> dict[str, Any]:
    return {"type": "MeshAccessLog", "mesh": "default", "name": "log-ext", "spec": {"to": [
        {"targetRef": {"kind": "MeshExternalService", "name": name},
         "default": {"backends": [{"type": "File", "file": {"path": "/tmp/ext.log"}}]}}]}}


CASES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "tproxy_tls_dns_grpc": ([HTTPBIN, PG, GRPC], "web-1"),
    "classic_outbound_backendref": ([HTTPBIN, PG], "classic-1"),
    "tproxy_policies_to_extsvc": ([HTTPBIN, PG, timeout_to("httpbin"), retry_to("pg"), log_to("httpbin")],
                                  "web-1"),
}


def _state(docs: list[dict[str, Any]], dataplanes: list[dict[str, Any]] = WORLD) -> Any:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["type"], []).append(d)
    return build_mesh_state({"type": "Mesh", "name": "default"}, dataplanes, by_kind)


def _generate(case: str, ca: str = CA_PEM) -> tuple[dict[str, dict[str, Any]], list[str]]:
    docs, name = CASES[case]
    state = _state(json.loads(json.dumps(docs).replace(json.dumps(CA_PEM)[1:-1], json.dumps(ca)[1:-1])))
    snap = proxy_snapshot(state, state.by_name[name])
    resources = {t: {n: r.message for n, r in snap.resources(t).items()} for t in snap.types()}
    return resources, proxy_warnings(state.ctx, state.by_name[name])


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources, warnings = _generate(case)
    assert_golden({"resources": resources_to_plain(resources), "warnings": warnings}, case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    pki = Pki()
    resources, _ = _generate(case, ca=pki.ca_pem.decode())
    install_identity(tmp_path, pki, "spiffe://default/web", 1)
    envoy_validate(static_bootstrap(resources, trust_bundle=pki.ca_pem.decode()), tmp_path)


def test_kuma_docs_example_is_accepted_unchanged() -> None:
    doc = yaml.safe_load(KUMA_DOCS_EXAMPLE)
    assert validate(doc) == []
    policy = MeshExternalServicePlugin().parse(doc)
    assert policy.default is not None
    assert policy.default["tls"]["verification"]["caCert"] == {"inlineString": "test"}


def test_every_violation_has_its_path() -> None:
    bad = {"type": "MeshExternalService", "mesh": "default", "name": "Bad_Name", "spec": {
        "match": {"type": "Other", "port": 70000, "protocol": "udp"},
        "endpoints": [{"address": "not a host", "port": 0, "priority": 200}, "x"],
        "tls": {"enabled": "yes", "version": {"min": "TLS13", "max": "TLS12"},
                "verification": {"mode": "Trust", "serverName": "-bad-", "subjectAltNames": [{"type": "Regex"}],
                                 "caCert": {"file": "/a", "inline": "b"}, "clientCert": {"inlineString": "c"}}},
        "extra": 1}}
    paths = {p for p, _ in validate(bad)}
    assert {"name", "spec.extra", "spec.match.type", "spec.match.port", "spec.match.protocol",
            "spec.endpoints[0].address", "spec.endpoints[0].port", "spec.endpoints[0].priority", "spec.endpoints[1]",
            "spec.tls.enabled", "spec.tls.version", "spec.tls.verification.mode",
            "spec.tls.verification.serverName", "spec.tls.verification.subjectAltNames[0].type",
            "spec.tls.verification.subjectAltNames[0].value", "spec.tls.verification.caCert",
            "spec.tls.verification.clientKey"} <= paths, paths
    assert {p for p, _ in validate(mes("x", []))} == {"spec.endpoints"}
    with pytest.raises(ValidationError):
        MeshExternalServicePlugin().parse(bad)


def test_unresolvable_ca_leaves_the_service_out_with_a_warning(tmp_path: Path) -> None:
    missing = mes("vault", [{"address": "10.9.0.9", "port": 8200}], tls={
        "enabled": True, "verification": {"caCert": {"file": str(tmp_path / "nope.pem")}}})
    secret = mes("kms", [{"address": "10.9.0.8", "port": 443}], tls={
        "enabled": True, "verification": {"caCert": {"secret": "kms-ca"}}})
    state = _state([missing, secret, HTTPBIN])
    web = state.by_name["web-1"]
    warnings = proxy_warnings(state.ctx, web)
    assert any("vault" in w and "nope.pem" in w and "no cluster" in w for w in warnings), warnings
    assert any("kms" in w and "Secret \"kms-ca\" does not exist" in w for w in warnings), warnings
    snap = proxy_snapshot(state, web)
    assert set(snap.resources(CLUSTER)) >= {"extsvc/httpbin"}
    assert not {"extsvc/vault", "extsvc/kms"} & set(snap.resources(CLUSTER))


def dns_records(listener: Any) -> dict[str, list[str]]:
    """The DNS table the dynconf listener serves at /dns, as the agent reads it."""
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    for r in hcm.route_config.virtual_hosts[0].routes:
        if r.match.path == names.DYNCONF_DNS_PATH and r.direct_response.status == 200:
            return {rec["name"]: rec["ips"] for rec in json.loads(r.direct_response.body.inline_string)["records"]}
    raise AssertionError("no /dns route")


def test_dns_table_names_the_external_services() -> None:
    state = _state([HTTPBIN, PG])
    snap = proxy_snapshot(state, state.by_name["web-1"])
    records = dns_records(snap.resources(LISTENER)[names.DYNCONF_LISTENER].message)
    vips = {es.name: es.vip for es in state.ctx.external_services}
    assert records["httpbin.extsvc.mesh.local"] == [vips["httpbin"]]
    assert records["pg.extsvc.mesh.local"] == [vips["pg"]]
    assert records["backend.mesh"] == [state.ctx.vips["backend"]]  # the mesh's own records stay


def test_vips_are_stable_and_in_kumas_range() -> None:
    one = allocate_vips(["a", "b"])
    two = allocate_vips(["b", "c", "a"])
    assert one["a"] == two["a"] and one["b"] == two["b"]
    assert all(ip.startswith("242.") for ip in two.values()) and len(set(two.values())) == 3


def test_shared_between_proxies() -> None:
    state = _state([HTTPBIN], [dp("web-1", "10.0.0.1"), dp("web-2", "10.0.0.4")])
    a = proxy_snapshot(state, state.by_name["web-1"]).resources(CLUSTER)["extsvc/httpbin"]
    b = proxy_snapshot(state, state.by_name["web-2"]).resources(CLUSTER)["extsvc/httpbin"]
    assert a is b


def test_policies_land_on_the_external_service() -> None:
    resources, warnings = _generate("tproxy_policies_to_extsvc")
    cluster = resources[CLUSTER]["extsvc/httpbin"]
    assert cluster.connect_timeout.seconds == 3
    route = resources[ROUTE]["outbound:extsvc/httpbin"].virtual_hosts[0].routes[0].route
    assert route.timeout.seconds == 7
    assert "not applied" not in " ".join(warnings)
    capture = resources[LISTENER][names.OUTBOUND_PASSTHROUGH]
    chains = {c.name: c for c in capture.filter_chains}
    assert "extsvc/pg" in str(chains["outbound:extsvc/pg:5432"])
    assert "max_connect_attempts" in str(chains["outbound:extsvc/pg:5432"]) or \
        "maxConnectAttempts" in json.dumps(resources_to_plain({LISTENER: {"c": capture}}))
    assert "/tmp/ext.log" in str(chains["outbound:extsvc/httpbin:443"])
    assert "/tmp/ext.log" not in str(chains["outbound:extsvc/pg:5432"])


def test_inspect_shows_the_policies_on_a_classic_outbound_to_it() -> None:
    state = _state([HTTPBIN, timeout_to("httpbin")])
    proxy = build_proxy(state.ctx, state.by_name["classic-1"])
    timeouts = next(k for k in kind_policies(proxy) if k.kind == "MeshTimeout")
    outbound = next(o for o in timeouts.outbounds if o.service == "extsvc/httpbin")
    assert "to-ext" in outbound.policies
    assert "3s" in json.dumps(msgspec.to_builtins(outbound.conf))


def test_a_classic_outbound_to_it_is_rewritten_to_its_cluster() -> None:
    state = _state([HTTPBIN])
    snap = proxy_snapshot(state, state.by_name["classic-1"])
    listener = snap.resources(LISTENER)["outbound:127.0.0.1:10001"].message
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "outbound:extsvc/httpbin"
    assert "extsvc/httpbin" in snap.resources(CLUSTER)


def test_get_lists_the_hostname_and_endpoints() -> None:
    from dpagent.cli.resources import _header, _row
    from dpagent.controlplane.kinds import kind_of

    kind = kind_of("extsvc")
    row = dict(zip(_header(kind), _row(kind, {**PG, "creationTime": ""}), strict=True))
    assert row["HOSTNAME"] == "pg.extsvc.mesh.local:5432"
    assert row["ENDPOINTS"] == "db.example.com:5432,db2.example.com:5432"


def test_reachable_backends_limit_mesh_and_external_services() -> None:
    """Kuma's `reachableBackends`: only the listed MeshService (by `kuma.io/service`) and MeshExternalService get
    clusters, capture chains and DNS names; a proxy without it still gets everything."""
    limited = dp("web-1", "10.0.0.1")
    limited["networking"]["transparentProxying"]["reachableBackends"] = {"refs": [
        {"kind": "MeshService", "name": "backend"}, {"kind": "MeshExternalService", "name": "pg"}]}
    only_external = dp("web-2", "10.0.0.4")
    only_external["networking"]["transparentProxying"]["reachableBackends"] = {"refs": [
        {"kind": "MeshExternalService", "name": "httpbin"}]}
    state = _state([HTTPBIN, PG], [limited, only_external, *WORLD[1:]])

    def seen(name: str) -> tuple[set[str], set[str]]:
        snap = proxy_snapshot(state, state.by_name[name])
        records = dns_records(snap.resources(LISTENER)[names.DYNCONF_LISTENER].message)
        clusters = {c for c in snap.resources(CLUSTER) if not c.startswith(("inbound", "outbound:passthrough",
                                                                             "localhost"))}
        return clusters, set(records)

    clusters, records = seen("web-1")
    assert {"backend", "extsvc/pg"} <= clusters and not {"classic", "extsvc/httpbin", "web"} & clusters
    assert records == {"backend.mesh", "pg.extsvc.mesh.local"}
    clusters, records = seen("web-2")
    assert "extsvc/httpbin" in clusters and not {"backend", "extsvc/pg"} & clusters
    assert records == {"httpbin.extsvc.mesh.local"}
    everything, _ = seen("backend-1")  # no reachableBackends: every service and external service
    assert {"extsvc/httpbin", "extsvc/pg", "classic"} <= everything


def test_reachable_backends_refuse_what_they_cannot_resolve() -> None:
    from dpagent.model.dataplane import validate_dataplane

    doc = dp("web-1", "10.0.0.1")
    doc["networking"]["transparentProxying"]["reachableBackends"] = {"refs": [
        {"kind": "MeshService", "name": "backend", "port": 8080}, {"kind": "MeshGateway", "name": "gw"},
        {"kind": "MeshService", "labels": {"app": "x"}}], "extra": 1}
    paths = {p for p, _ in validate_dataplane(doc)}
    base = "networking.transparentProxying.reachableBackends"
    assert paths == {f"{base}.extra", f"{base}.refs[0].port", f"{base}.refs[1].kind", f"{base}.refs[2].name",
                     f"{base}.refs[2].labels"}
