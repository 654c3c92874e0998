"""The Envoy bootstrap returned by `POST /bootstrap`, in Envoy's proto3 JSON form, laid out like Kuma's
(reference kuma-dp.md §3.2): ADS over one static TLS cluster, CDS/LDS via ADS, node metadata the CP reads back.

Pure: the caller passes the token, CA and versions in, so the same params always give the same bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.nodeid import node_id

_T = "type.googleapis.com/"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ADMIN_SOCKET_MODE = 0o600


@dataclass(frozen=True)
class BootstrapParams:
    mesh: str
    name: str
    xds_host: str
    xds_port: int
    ca_pem: str
    service: str = ""
    workdir: str = ""
    admin_port: int = 9901
    token: str = ""
    token_path: str = ""  # on the proxy's host; when set, Envoy re-reads it for every new xDS stream
    dataplane_json: str = ""
    readiness_port: int = 0
    dns_port: int = 0
    versions: Mapping[str, Any] = field(default_factory=dict)
    features: Sequence[str] = ()
    proxy_type: str = "dataplane"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _admin(p: BootstrapParams) -> tuple[dict[str, Any], dict[str, str]]:
    """A Unix socket in the work dir when there is one: N agents per host then never fight over an admin port."""
    log = [{"name": "envoy.access_loggers.file", "typedConfig": {
        "@type": _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/null"}}]
    if p.workdir:
        path = f"{p.workdir.rstrip('/')}/{names.ADMIN_SOCKET}"
        return ({"accessLog": log, "address": {"pipe": {"path": path, "mode": ADMIN_SOCKET_MODE}}},
                {"dataplane.admin.socketPath": path})
    return ({"accessLog": log, "address": {"socketAddress": {"address": "127.0.0.1", "portValue": p.admin_port}}},
            {"dataplane.admin.address": "127.0.0.1", "dataplane.admin.port": str(p.admin_port)})


def _node(p: BootstrapParams, admin_meta: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = dict(admin_meta)
    meta["dataplane.proxyType"] = p.proxy_type
    if p.readiness_port:
        meta["dataplane.readinessReporter.port"] = str(p.readiness_port)
    if p.dns_port:
        meta["dataplane.dns.port"] = str(p.dns_port)
    if p.dataplane_json:
        meta["dataplane.resource"] = p.dataplane_json
    meta["features"] = sorted(p.features)
    meta["version"] = dict(p.versions)
    meta["workdir"] = p.workdir
    # Envoy refuses file-based SDS when node.cluster is empty, so fall back to the proxy name.
    return {"id": node_id(p.mesh, p.name), "cluster": p.service or p.name, "metadata": dict(sorted(meta.items()))}


def _ads_cluster(p: BootstrapParams) -> dict[str, Any]:
    ip = _is_ip(p.xds_host)
    tls: dict[str, Any] = {
        "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "commonTlsContext": {"tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
                             "validationContextSdsSecretConfig": {"name": names.CP_VALIDATION_CTX}},
    }
    if not ip:
        tls["sni"] = p.xds_host
    cluster: dict[str, Any] = {
        "name": names.ADS_CLUSTER,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connectTimeout": "1s",
        "loadAssignment": {"clusterName": names.ADS_CLUSTER, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": p.xds_host, "portValue": p.xds_port}}}}]}]},
        "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": tls},
        "typedExtensionProtocolOptions": {_HTTP_OPTIONS: {
            "@type": _T + _HTTP_OPTIONS, "explicitHttpConfig": {"http2ProtocolOptions": {}}}},
        "upstreamConnectionOptions": {"tcpKeepalive": {"keepaliveInterval": 10, "keepaliveProbes": 3,
                                                       "keepaliveTime": 10}},
    }
    if not ip:
        cluster["dnsLookupFamily"] = "V4_PREFERRED"
    return cluster


def _cp_validation(p: BootstrapParams) -> dict[str, Any]:
    san = "IP_ADDRESS" if _is_ip(p.xds_host) else "DNS"
    return {"name": names.CP_VALIDATION_CTX, "validationContext": {
        "trustedCa": {"inlineString": p.ca_pem},
        "matchTypedSubjectAltNames": [{"sanType": san, "matcher": {"exact": p.xds_host}}],
    }}


def _reloadable_grpc(p: BootstrapParams) -> dict[str, Any]:
    """ADS over Envoy's Google gRPC client with the token read from a file for every new stream.

    A token baked into the bootstrap can never be rotated without restarting Envoy: once the old one expires or
    is revoked, the CP closes the stream and every reconnect fails. Reading the file per stream lets an operator
    replace the token file and have the next reconnect use it (Kuma calls this "reloadable tokens")."""
    host = f"[{p.xds_host}]" if ":" in p.xds_host else p.xds_host
    return {"googleGrpc": {
        "targetUri": f"{host}:{p.xds_port}",
        "statPrefix": "ads",
        # Without naming this factory, Envoy's default one ignores plugin call credentials (no token is sent).
        "credentialsFactoryName": "envoy.grpc_credentials.file_based_metadata",
        "channelCredentials": {"sslCredentials": {"rootCerts": {"inlineString": p.ca_pem}}},
        "callCredentials": [{"fromPlugin": {
            "name": "envoy.grpc_credentials.file_based_metadata",
            "typedConfig": {"@type": _T + "envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                            "secretData": {"filename": p.token_path}, "headerKey": "authorization"}}}],
        "channelArgs": {"args": {"grpc.keepalive_time_ms": {"intValue": "10000"},
                                 "grpc.keepalive_timeout_ms": {"intValue": "30000"},
                                 "grpc.http2.max_pings_without_data": {"intValue": "0"},
                                 "grpc.max_receive_message_length": {"intValue": str(64 * 1024 * 1024)}}},
    }}


MAX_DOWNSTREAM_CONNECTIONS = 50_000


def render_bootstrap(params: BootstrapParams) -> dict[str, Any]:
    """A JSON/YAML-able bootstrap; the token rides as `authorization` gRPC metadata, raw (no `Bearer `)."""
    admin, admin_meta = _admin(params)
    grpc = _reloadable_grpc(params) if params.token_path else {"envoyGrpc": {"clusterName": names.ADS_CLUSTER}}
    if params.token and not params.token_path:
        grpc["initialMetadata"] = [{"key": "authorization", "value": params.token}]
    ads = {"ads": {}, "initialFetchTimeout": "0s", "resourceApiVersion": "V3"}
    return {
        "admin": admin,
        "node": _node(params, admin_meta),
        "defaultRegexEngine": {"name": "envoy.regex_engines.google_re2",
                               "typedConfig": {"@type": _T + "envoy.extensions.regex_engines.v3.GoogleRE2"}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3", "setNodeOnFirstMessageOnly": True,
                          "grpcServices": [grpc]},
            "cdsConfig": dict(ads),
            "ldsConfig": dict(ads),
        },
        "layeredRuntime": {"layers": [{"name": "dpagent", "staticLayer": {
            "re2.max_program_size.error_level": 4294967295, "re2.max_program_size.warn_level": 1000}}]},
        "staticResources": {"clusters": [_ads_cluster(params)], "secrets": [_cp_validation(params)]},
        # A bound on downstream connections: an unbounded sidecar on a shared VM can exhaust the host's file
        # descriptors; Kuma sets the same figure for its gateways.
        "overloadManager": {"resourceMonitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typedConfig": {"@type": _T + "envoy.extensions.resource_monitors.downstream_connections.v3."
                                          "DownstreamConnectionsConfig",
                            "maxActiveDownstreamConnections": MAX_DOWNSTREAM_CONNECTIONS}}]},
        "statsConfig": {"statsTags": [
            {"tagName": "name", "regex": r"^grpc\.((.+)\.)"},
            {"tagName": "status", "regex": r"^grpc.*streams_closed(_([0-9]+))"},
            {"tagName": "worker", "regex": r"(worker_([0-9]+)\.)"},
            {"tagName": "listener", "regex": r"((.+?)\.)rbac\."},
        ]},
    }
