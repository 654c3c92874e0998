"""The /bootstrap Envoy config: Kuma's layout, golden-compared, parsed by protobuf and accepted by the real Envoy."""

from __future__ import annotations

import json
from pathlib import Path

import envoy.extensions.access_loggers.file.v3.file_pb2
import envoy.extensions.regex_engines.v3.google_re2_pb2
import envoy.extensions.resource_monitors.downstream_connections.v3.downstream_connections_pb2
import envoy.extensions.transport_sockets.tls.v3.tls_pb2
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401  (register Any types)
import pytest
from _xds_testlib import Pki, assert_golden, envoy_validate
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf.json_format import ParseDict

from dpagent.controlplane.xds.bootstrap import BootstrapParams, render_bootstrap

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def params(**kw: object) -> BootstrapParams:
    base: dict[str, object] = dict(
        mesh="default", name="web-1", service="web", workdir="/var/lib/dpagent/web-1", xds_host="cp.example.com",
        xds_port=5679, ca_pem=CA, token="eyJ.token.sig", dataplane_json='{"type":"Dataplane"}',
        readiness_port=9902, dns_port=15053, versions={"envoy": {"version": "1.40.0"}, "dpagent": {"version": "0.1.0"}},
        features=["feature-b", "feature-a"])
    base.update(kw)
    return BootstrapParams(**base)  # type: ignore[arg-type]


def test_golden_workdir_hostname() -> None:
    assert_golden(render_bootstrap(params()), "bootstrap_uds_admin")


def test_tcp_admin_and_ip_host() -> None:
    b = render_bootstrap(params(workdir="", admin_port=9901, xds_host="10.1.2.3", token=""))
    assert b["admin"]["address"] == {"socketAddress": {"address": "127.0.0.1", "portValue": 9901}}
    assert b["node"]["metadata"]["dataplane.admin.port"] == "9901"
    ads = b["staticResources"]["clusters"][0]
    assert ads["type"] == "STATIC" and "sni" not in ads["transportSocket"]["typedConfig"]
    assert "initialMetadata" not in b["dynamicResources"]["adsConfig"]["grpcServices"][0]
    san = b["staticResources"]["secrets"][0]["validationContext"]["matchTypedSubjectAltNames"][0]
    assert san == {"sanType": "IP_ADDRESS", "matcher": {"exact": "10.1.2.3"}}


def test_node_and_ads() -> None:
    b = render_bootstrap(params())
    assert b["node"]["id"] == "default.web-1" and b["node"]["cluster"] == "web"
    meta = b["node"]["metadata"]
    assert meta["dataplane.admin.socketPath"] == "/var/lib/dpagent/web-1/envoy-admin.sock"
    assert meta["features"] == ["feature-a", "feature-b"]
    assert b["admin"]["address"]["pipe"]["mode"] == 0o600
    grpc = b["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert grpc["initialMetadata"] == [{"key": "authorization", "value": "eyJ.token.sig"}]
    assert b["dynamicResources"]["cdsConfig"]["initialFetchTimeout"] == "0s"


def test_parses_as_bootstrap_proto() -> None:
    ParseDict(render_bootstrap(params()), bootstrap_pb2.Bootstrap())


@pytest.mark.envoy
@pytest.mark.parametrize("host", ["cp.example.com", "127.0.0.1"])
def test_envoy_accepts(host: str, tmp_path: Path) -> None:
    b = render_bootstrap(params(workdir=str(tmp_path), xds_host=host, ca_pem=Pki().ca_pem.decode()))
    json.dumps(b)
    envoy_validate(b, tmp_path)


def test_cluster_never_empty() -> None:
    assert render_bootstrap(params(service=""))["node"]["cluster"] == "web-1"


def test_reloadable_token_reads_the_file_per_stream() -> None:
    b = render_bootstrap(params(token_path="/var/lib/dpagent/web-1/dataplane-token"))
    svc = b["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert "initialMetadata" not in svc, "the token is not baked into the bootstrap"
    g = svc["googleGrpc"]
    assert g["targetUri"] == "cp.example.com:5679"
    assert g["credentialsFactoryName"] == "envoy.grpc_credentials.file_based_metadata"
    plugin = g["callCredentials"][0]["fromPlugin"]["typedConfig"]
    assert plugin["secretData"] == {"filename": "/var/lib/dpagent/web-1/dataplane-token"}
    assert plugin["headerKey"] == "authorization"
    assert render_bootstrap(params(token_path="x", xds_host="::1"))["dynamicResources"]["adsConfig"][
        "grpcServices"][0]["googleGrpc"]["targetUri"] == "[::1]:5679"


@pytest.mark.envoy
def test_envoy_accepts_the_reloadable_form(tmp_path: Path) -> None:
    pki = Pki()
    (tmp_path / "token").write_text("eyJ.token.sig")
    b = render_bootstrap(params(ca_pem=pki.ca_pem.decode(), workdir=str(tmp_path), token_path=str(tmp_path / "token")))
    envoy_validate(b, tmp_path)


def _token_sds_params(tmp: Path, **kw: object) -> BootstrapParams:
    return params(token_path=str(tmp / "dataplane-token"), features=["feature-token-sds"], **kw)


def test_reconnect_back_off_is_bounded_on_every_form() -> None:
    """Envoy's own ADS back-off grows to 30 s; only `envoy_grpc.retry_policy` can bound it."""
    for p in (params(), params(token=""), _token_sds_params(Path("/w"))):
        svc = render_bootstrap(p)["dynamicResources"]["adsConfig"]["grpcServices"][0]
        assert svc["envoyGrpc"]["retryPolicy"]["retryBackOff"] == {"baseInterval": "0.5s", "maxInterval": "3s"}


def test_token_sds_form_injects_the_token_from_the_agents_secret_file() -> None:
    b = render_bootstrap(_token_sds_params(Path("/var/lib/dpagent/web-1")))
    svc = b["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert "initialMetadata" not in svc and "googleGrpc" not in svc, "the token is not baked into the bootstrap"
    opts = b["staticResources"]["clusters"][0]["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    injector, codec = opts["httpFilters"]
    assert codec["name"] == "envoy.filters.http.upstream_codec"
    cred = injector["typedConfig"]["credential"]["typedConfig"]
    assert cred["header"] == "authorization"
    assert cred["credential"]["sdsConfig"]["pathConfigSource"] == {
        "path": "/var/lib/dpagent/web-1/dataplane-token.sds.yaml",
        "watchedDirectory": {"path": "/var/lib/dpagent/web-1"}}


@pytest.mark.envoy
def test_envoy_accepts_the_token_sds_form(tmp_path: Path) -> None:
    import envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2
    import envoy.extensions.filters.http.upstream_codec.v3.upstream_codec_pb2
    import envoy.extensions.http.injected_credentials.generic.v3.generic_pb2  # noqa: F401

    from dpagent.agent.lifecycle import TokenMirror
    from dpagent.agent.settings import build_agent_config

    cfg, _ = build_agent_config({"cp_url": "https://cp:5678", "name": "web-1", "mesh": "default",
                                 "token": "eyJ.token.sig"}, env={})
    TokenMirror(cfg, tmp_path).sync()  # the secret file exactly as the agent writes it
    b = render_bootstrap(_token_sds_params(tmp_path, ca_pem=Pki().ca_pem.decode(), workdir=str(tmp_path)))
    ParseDict(b, bootstrap_pb2.Bootstrap())
    envoy_validate(b, tmp_path)


@pytest.mark.envoy
@pytest.mark.parametrize("hosts", [("10.0.0.1", "10.0.0.2", "10.0.0.3"), ("cp-a.example", "10.0.0.2")])
def test_every_replica_is_an_ads_endpoint(hosts: tuple[str, ...], tmp_path: Path) -> None:
    """Several replicas: one endpoint each, every replica's name accepted in its certificate, and a refused
    replica ejected so the reconnect after its death goes to a live one."""
    b = render_bootstrap(params(workdir=str(tmp_path), xds_host=hosts[1], xds_hosts=hosts,
                                ca_pem=Pki().ca_pem.decode()))
    ads = b["staticResources"]["clusters"][0]
    eps = [e["endpoint"]["address"]["socketAddress"] for e in ads["loadAssignment"]["endpoints"][0]["lbEndpoints"]]
    assert eps == [{"address": h, "portValue": 5679} for h in hosts]
    assert ads["type"] == ("STATIC" if all(h[0].isdigit() for h in hosts) else "STRICT_DNS")
    assert "sni" not in ads["transportSocket"]["typedConfig"], "one SNI cannot name several replicas"
    assert ads["outlierDetection"]["consecutiveLocalOriginFailure"] == 1
    sans = b["staticResources"]["secrets"][0]["validationContext"]["matchTypedSubjectAltNames"]
    assert [s["matcher"]["exact"] for s in sans] == list(hosts)
    envoy_validate(b, tmp_path)
