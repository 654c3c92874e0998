"""MeshExternalService → Envoy: per external service one outbound cluster (STATIC for IP endpoints, STRICT_DNS as
soon as one is a hostname; endpoint priorities as Envoy priorities; UpstreamTlsContext with SNI, CA and SAN
checks when `tls.enabled`), for HTTP kinds a route configuration, and the way in: a chain on the transparent
proxy's outbound capture listener matching its VIP and port (plus its `<name>.extsvc.mesh.local` DNS record), or,
without a transparent proxy, the `networking.outbound` listener whose backendRef names it.

Everything is tagged Origin.OUTBOUND with the service key `extsvc/<name>`, so MeshTimeout, MeshRetry,
MeshAccessLog, MeshCircuitBreaker and MeshHealthCheck reach it through their usual outbound paths. Clusters and
routes are shared by every proxy (memoised by the external service's digest); the capture listener and DNS table
by (what they were built from, the external services).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshexternalservice.api import ExternalService, endpoint_is_ip
from dpagent.controlplane.policies.targetref import MESH_EXTERNAL_SERVICE
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.core import pack, seconds, socket_address
from dpagent.controlplane.xds.builders.tls import TLS_SOCKET
from dpagent.controlplane.xds.dns import dns_table
from dpagent.controlplane.xds.generators.dynconf import set_dynconf_route
from dpagent.controlplane.xds.generators.outbound import outbound_filter
from dpagent.controlplane.xds.generators.transparent import reachable_services
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE
from dpagent.model.dataplane import Dataplane

# With no caCert, a Secured external service is verified against the proxy host's system trust store (Debian's
# ca-certificates path), as a browser would.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
_P = common_pb2.TlsParameters
_VERSIONS = {"TLSAuto": _P.TLS_AUTO, "TLS10": _P.TLSv1_0, "TLS11": _P.TLSv1_1, "TLS12": _P.TLSv1_2,
             "TLS13": _P.TLSv1_3}


def server_name(es: ExternalService) -> str:
    """SNI: `verification.serverName`, else the first hostname endpoint (an IP is never sent as SNI)."""
    ver = es.tls.verification if es.tls is not None else None
    if ver is not None and ver.server_name:
        return ver.server_name
    return next((ep.address for ep in es.endpoints if not endpoint_is_ip(ep)), "")


def _san_matchers(es: ExternalService, sni: str) -> list[common_pb2.SubjectAltNameMatcher]:
    ver = es.tls.verification if es.tls is not None else None
    sans = ver.subject_alt_names if ver is not None else ()
    out = []
    for san in sans:
        matcher = string_pb2.StringMatcher(prefix=san.value) if san.type == "Prefix" \
            else string_pb2.StringMatcher(exact=san.value)
        out.append(common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=matcher))
    if not out and sni:
        out.append(common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.DNS,
                                                    matcher=string_pb2.StringMatcher(exact=sni)))
    return out


def upstream_tls(es: ExternalService) -> base_pb2.TransportSocket:
    """TLS origination toward the external service. Modes: Secured checks CA and SAN (the SANs listed, else the
    SNI), SkipSAN only the CA, SkipCA only the SAN (any issuer), SkipAll nothing."""
    assert es.tls is not None
    ver = es.tls.verification
    mode = ver.mode if ver is not None else "Secured"
    sni = server_name(es)
    common = tls_pb2.CommonTlsContext()
    if es.tls.version is not None:
        common.tls_params.tls_minimum_protocol_version = _VERSIONS[es.tls.version.min]
        common.tls_params.tls_maximum_protocol_version = _VERSIONS[es.tls.version.max]
        if es.tls.version.min == "TLS13" and es.tls.version.max == "TLSAuto":
            common.tls_params.tls_maximum_protocol_version = _P.TLSv1_3  # Envoy's client default stops at 1.2
    if es.client_cert_pem and es.client_key_pem:
        common.tls_certificates.append(tls_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=es.client_cert_pem),
            private_key=base_pb2.DataSource(inline_string=es.client_key_pem)))
    if mode != "SkipAll":
        validation = common.validation_context
        if es.ca_pem:
            validation.trusted_ca.inline_string = es.ca_pem
        else:
            validation.trusted_ca.filename = SYSTEM_CA_FILE
        if mode == "SkipCA":  # Envoy checks SANs only with a trust store: keep one, accept any issuer
            validation.trust_chain_verification = common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
        if mode in ("Secured", "SkipCA"):
            validation.match_typed_subject_alt_names.extend(_san_matchers(es, sni))
    ctx = tls_pb2.UpstreamTlsContext(sni=sni, allow_renegotiation=es.tls.allow_renegotiation,
                                     common_tls_context=common)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def _assignment(es: ExternalService) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by priority; Kuma's 0–128 values become Envoy's contiguous priorities in order."""
    ranks = {p: i for i, p in enumerate(sorted({ep.priority for ep in es.endpoints}))}
    groups: dict[int, list[endpoint_components_pb2.LbEndpoint]] = {}
    for ep in sorted(es.endpoints, key=lambda e: (e.priority, e.address, e.port)):
        groups.setdefault(ranks[ep.priority], []).append(endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, ep.port),
                                                      hostname="" if endpoint_is_ip(ep) else ep.address)))
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=es.key, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(priority=rank, lb_endpoints=eps)
        for rank, eps in sorted(groups.items())])


def cluster(es: ExternalService) -> cluster_pb2.Cluster:
    dns = any(not endpoint_is_ip(ep) for ep in es.endpoints)
    c = cluster_pb2.Cluster(name=es.key, connect_timeout=seconds(cb.CONNECT_TIMEOUT), load_assignment=_assignment(es),
                            type=cluster_pb2.Cluster.STRICT_DNS if dns else cluster_pb2.Cluster.STATIC)
    if dns:
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if es.protocol in ("http2", "grpc"):
        cb._http2(c)
    if es.tls is not None and es.tls.enabled:
        c.transport_socket.CopyFrom(upstream_tls(es))
    return c


def route(es: ExternalService) -> route_pb2.RouteConfiguration:
    """The catch-all route. The app called `<name>.extsvc.mesh.local`; the external server expects its own name
    in Host, so it is rewritten: to the resolved endpoint's hostname (DNS endpoints) or to the TLS server name."""
    rc = lb.route_config(names.outbound_route(es.key), es.key, validate_clusters=False)
    action = rc.virtual_hosts[0].routes[0].route
    if any(not endpoint_is_ip(ep) for ep in es.endpoints):
        action.auto_host_rewrite.value = True
    elif es.tls is not None and es.tls.enabled and server_name(es):
        action.host_rewrite_literal = server_name(es)
    return rc


def _filter(es: ExternalService, name: str) -> listener_components_pb2.Filter:
    return outbound_filter(name, es.key, {es.key: es.protocol})


def capture_chain(es: ExternalService) -> listener_components_pb2.FilterChain:
    """The chain of the outbound capture listener that takes calls to the external service's VIP and port."""
    name = names.outbound_chain(es.key, es.port)
    return lb.filter_chain([_filter(es, name)], name=name, destination_port=es.port, prefixes=[es.vip])


def outbound_listener(es: ExternalService, address: str, port: int) -> listener_pb2.Listener:
    name = names.outbound_listener(address, port)
    return lb.listener(name, address, port, lb.OUTBOUND, [_filter(es, name)])


def wanted(dp: Dataplane, services: Sequence[ExternalService]) -> list[ExternalService]:
    """Under a transparent proxy every usable external service (by VIP and DNS name) that `reachableBackends`
    allows; else the ones an outbound's backendRef names."""
    usable = [es for es in services if es.usable]
    tp = dp.networking.transparent_proxying
    if tp is not None:
        return [es for es in usable if tp.reaches_external(es.name)]
    named = {str((ob.backend_ref or {}).get("name", "")) for ob in dp.networking.outbound
             if (ob.backend_ref or {}).get("kind") == MESH_EXTERNAL_SERVICE}
    return [es for es in usable if es.name in named]


def configure(rs: ResourceSet, ctx: MeshView, dp: Dataplane, services: Sequence[ExternalService],
              mesh_services: Sequence[str]) -> None:
    """`mesh_services`: the mesh's own services (their DNS records are kept next to the external ones)."""
    chosen = wanted(dp, services)
    if not chosen:
        return
    for es in chosen:
        rs.add(CLUSTER, es.key, ctx.shared(("extsvc", CLUSTER, es.digest), CLUSTER, es.key, lambda e=es: cluster(e)),
               Origin.OUTBOUND, service=es.key)
        if es.protocol in lb.HTTP_PROTOCOLS:
            rname = names.outbound_route(es.key)
            rs.add(ROUTE, rname, ctx.shared(("extsvc", ROUTE, es.digest), ROUTE, rname, lambda e=es: route(e)),
                   Origin.OUTBOUND, service=es.key)
    by_name = {es.name: es for es in chosen}
    for ob in dp.networking.outbound:
        ref = ob.backend_ref or {}
        es = by_name.get(str(ref.get("name", ""))) if ref.get("kind") == MESH_EXTERNAL_SERVICE else None
        entry = rs.get(LISTENER, names.outbound_listener(ob.address, ob.port)) if es is not None else None
        if es is not None and entry is not None:
            rs.replace(entry, ctx.shared(("extsvc", LISTENER, es.digest, ob.address, ob.port), LISTENER, entry.name,
                                         lambda e=es, o=ob: outbound_listener(e, o.address, o.port)))
            entry.service = es.key
    tp = dp.networking.transparent_proxying
    capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
    if tp is None or capture is None:
        return
    digests = tuple(es.digest for es in chosen)
    base = capture.shared

    def with_chains(message: listener_pb2.Listener) -> listener_pb2.Listener:
        out = listener_pb2.Listener()
        out.CopyFrom(message)
        out.filter_chains.extend(capture_chain(es) for es in chosen)
        return out

    if base is None:
        rs.replace(capture, with_chains(capture.message))  # type: ignore[arg-type]
    else:
        rs.replace(capture, ctx.shared(("extsvc", "capture", base.digest, digests), LISTENER, capture.name,
                                       lambda: with_chains(base.message)))  # type: ignore[arg-type]
    reachable = tuple(reachable_services(dp, mesh_services))
    records = tuple((es.hostname, es.vip) for es in chosen)
    body = ctx.memo(("extsvc", "dns", reachable, records),
                    lambda: dns_table(ctx.vips, reachable, extra=dict(records)))
    set_dynconf_route(rs, ctx, names.DYNCONF_DNS_PATH, body)
