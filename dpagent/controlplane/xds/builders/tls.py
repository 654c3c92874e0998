"""mTLS transport sockets: the proxy presents `identity_cert` (file SDS: the key stays on the host) and trusts
`mesh_ca` (SDS over ADS: the public trust bundle, pushed mesh-wide when a CA is added or retired)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.core import ads_sds, file_sds, pack

TLS_SOCKET = "envoy.transport_sockets.tls"
MESH_ALPN = ("kuma",)  # what a mesh proxy offers as a client; Permissive inbounds match on it


def _uri_san(exact: str = "", prefix: str = "") -> common_pb2.SubjectAltNameMatcher:
    matcher = string_pb2.StringMatcher(exact=exact) if exact else string_pb2.StringMatcher(prefix=prefix)
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)


def _common(san: common_pb2.SubjectAltNameMatcher) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
        tls_certificate_sds_secret_configs=[file_sds(names.IDENTITY_CERT)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(match_typed_subject_alt_names=[san]),
            validation_context_sds_secret_config=ads_sds(names.MESH_CA),
        ),
    )


def upstream_tls(mesh: str, service: str) -> base_pb2.TransportSocket:
    """Client side: only an endpoint whose certificate says it *is* `service` in `mesh` is accepted."""
    common = _common(_uri_san(exact=names.spiffe_id(mesh, service)))
    # Offering the mesh ALPN value is what lets a Permissive inbound tell a mesh peer from an app's own TLS.
    common.alpn_protocols.extend(MESH_ALPN)
    ctx = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def upstream_tls_any(mesh: str) -> base_pb2.TransportSocket:
    """Client side towards an address rather than a service (direct access): any identity of `mesh` is accepted,
    since which service owns an ip:port is not something the client can check."""
    common = _common(_uri_san(prefix=names.spiffe_mesh_prefix(mesh)))
    common.alpn_protocols.extend(MESH_ALPN)
    ctx = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def downstream_tls(mesh: str) -> base_pb2.TransportSocket:
    """Server side: any identity of this mesh gets through TLS; which services may talk is RBAC's job."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(_uri_san(prefix=names.spiffe_mesh_prefix(mesh))),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def mesh_ca_secret(bundle_pem: str) -> secret_pb2.Secret:
    """The mesh's trust bundle: every root whose leaves may still be presented by some proxy."""
    return secret_pb2.Secret(name=names.MESH_CA, validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string=bundle_pem)))
