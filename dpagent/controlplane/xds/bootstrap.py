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
    # Every CP replica's host, xds_host among them; empty means xds_host alone. Envoy's ADS cluster gets one
    # endpoint per host, so when the replica holding the stream dies Envoy reconnects to another.
    xds_hosts: Sequence[str] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.xds_hosts])) or (self.xds_host,)


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
    hosts = p.hosts
    ip = all(_is_ip(h) for h in hosts)
    tls: dict[str, Any] = {
        "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "commonTlsContext": {"tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
                             "validationContextSdsSecretConfig": {"name": names.CP_VALIDATION_CTX}},
    }
    if not _is_ip(hosts[0]) and len(hosts) == 1:
        tls["sni"] = hosts[0]
    cluster: dict[str, Any] = {
        "name": names.ADS_CLUSTER,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connectTimeout": "1s",
        "loadAssignment": {"clusterName": names.ADS_CLUSTER, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": h, "portValue": p.xds_port}}}} for h in hosts]}]},
        "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": tls},
        "typedExtensionProtocolOptions": {_HTTP_OPTIONS: {
            "@type": _T + _HTTP_OPTIONS, "explicitHttpConfig": {"http2ProtocolOptions": {}},
            **({"httpFilters": _token_injector(p)} if _token_sds(p) else {})}},
        "upstreamConnectionOptions": {"tcpKeepalive": {"keepaliveInterval": 10, "keepaliveProbes": 3,
                                                       "keepaliveTime": 10}},
    }
    if not ip:
        cluster["dnsLookupFamily"] = "V4_PREFERRED"
    if len(hosts) > 1:
        # A replica that refuses connections (killed) is skipped for a while, so the reconnect after its death
        # lands on a live one instead of cycling through the dead address.
        cluster["outlierDetection"] = {"consecutiveLocalOriginFailure": 1, "splitExternalLocalOriginErrors": True,
                                       "enforcingConsecutiveLocalOriginFailure": 100, "baseEjectionTime": "10s",
                                       "maxEjectionPercent": 100}
    return cluster


def _cp_validation(p: BootstrapParams) -> dict[str, Any]:
    return {"name": names.CP_VALIDATION_CTX, "validationContext": {
        "trustedCa": {"inlineString": p.ca_pem},
        "matchTypedSubjectAltNames": [{"sanType": "IP_ADDRESS" if _is_ip(h) else "DNS", "matcher": {"exact": h}}
                                      for h in p.hosts],
    }}


# How soon a proxy is back after a CP outage. Envoy re-opens a failed ADS stream after a jittered exponential
# back-off: by default from 0.5 s up to 30 s, the wait drawn uniformly below the current step. Proxies came back
# 3-9 s after a 10 s outage, and up to ~30 s after a long one. Envoy takes a different back-off only from
# `envoy_grpc.retry_policy` (not for its Google gRPC client), so ADS goes over the Envoy gRPC client with the step
# capped at a few seconds: the wait then no longer depends on how long the outage was. The cost is one connection
# attempt per proxy every ~1.5 s while the CP is down, which a dead port refuses for nothing; the jitter spreads a
# fleet's reconnects when it comes back.
RECONNECT_BASE = "0.5s"
RECONNECT_MAX = "3s"
# Agents that write their token as a file-based SDS secret next to the token file say so with this feature; only
# for them is the token injected from that secret (older agents keep the Google gRPC file credentials).
TOKEN_SDS_FEATURE = "feature-token-sds"
TOKEN_SDS_SUFFIX = ".sds.yaml"
TOKEN_SECRET = "dataplane_token"
_INJECTOR = "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector"
_GENERIC = "envoy.extensions.http.injected_credentials.generic.v3.Generic"
_UPSTREAM_CODEC = "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"


def _token_sds(p: BootstrapParams) -> bool:
    return bool(p.token_path) and TOKEN_SDS_FEATURE in p.features


def _token_injector(p: BootstrapParams) -> list[dict[str, Any]]:
    """Upstream filters of the ADS cluster that set `authorization` from the token secret on every new stream.

    The secret is a file the agent rewrites (by rename) when the token file changes, in a directory Envoy watches,
    so a replaced token is used from the next reconnect without restarting Envoy: what Kuma's "reloadable tokens"
    give, without the Google gRPC client and its fixed reconnect back-off."""
    path = p.token_path + TOKEN_SDS_SUFFIX
    cut = max(path.rfind("/"), path.rfind("\\"))
    sds = {"pathConfigSource": {"path": path, "watchedDirectory": {"path": path[:cut] if cut > 0 else "."}}}
    return [
        {"name": "envoy.filters.http.credential_injector", "typedConfig": {
            "@type": _T + _INJECTOR, "overwrite": True,
            "credential": {"name": "envoy.http.injected_credentials.generic", "typedConfig": {
                "@type": _T + _GENERIC, "header": "authorization",
                "credential": {"name": TOKEN_SECRET, "sdsConfig": sds}}}}},
        {"name": "envoy.filters.http.upstream_codec", "typedConfig": {"@type": _T + _UPSTREAM_CODEC}},
    ]


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
    if params.token_path and not _token_sds(params):
        grpc = _reloadable_grpc(params)
    else:
        grpc = {"envoyGrpc": {"clusterName": names.ADS_CLUSTER, "retryPolicy": {
            "retryBackOff": {"baseInterval": RECONNECT_BASE, "maxInterval": RECONNECT_MAX}}}}
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
