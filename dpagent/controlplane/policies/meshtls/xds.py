"""MeshTLS's Envoy edits: split or merge each inbound's plaintext chain (builders/permissive.py) and set
`tls_params` on the inbound DownstreamTlsContexts and the proxy's in-mesh outbound UpstreamTlsContexts.

Inbound listeners are this proxy's own (copy-on-write via `rs.edit`); outbound clusters are shared across proxies,
so they go through `cluster_edit`, keyed by the parameters."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.cluster_edit import edit_outbound_clusters
from dpagent.controlplane.policies.meshtls.api import KIND
from dpagent.controlplane.policies.meshtls.plugin import TlsParams
from dpagent.controlplane.policies.targetref import is_external
from dpagent.controlplane.xds.builders.core import pack
from dpagent.controlplane.xds.builders.permissive import is_plaintext, make_permissive, make_strict
from dpagent.controlplane.xds.builders.tls import TLS_SOCKET
from dpagent.controlplane.xds.resources import Entry, ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER

_P = common_pb2.TlsParameters
VERSIONS = {"TLSAuto": _P.TLS_AUTO, "TLS10": _P.TLSv1_0, "TLS11": _P.TLSv1_1, "TLS12": _P.TLSv1_2,
            "TLS13": _P.TLSv1_3}


def _set_params(common: tls_pb2.CommonTlsContext, params: TlsParams) -> None:
    if params.min is not None:
        common.tls_params.tls_minimum_protocol_version = VERSIONS[params.min]
    if params.max is not None:
        common.tls_params.tls_maximum_protocol_version = VERSIONS[params.max]
    elif params.min == "TLS13":  # an Envoy client stops at TLS 1.2 by default: it could not meet its own floor
        common.tls_params.tls_maximum_protocol_version = _P.TLSv1_3
    if params.ciphers:
        common.tls_params.cipher_suites[:] = list(params.ciphers)


def _edit_socket(socket: base_pb2.TransportSocket, ctx_type: type, params: TlsParams) -> None:
    ctx = ctx_type()
    socket.typed_config.Unpack(ctx)
    _set_params(ctx.common_tls_context, params)
    socket.typed_config.CopyFrom(pack(ctx))


def configure(rs: ResourceSet, ctx: MeshView, modes: Mapping[str, str], params: TlsParams) -> None:
    """Modes per inbound key; params for every mesh chain and in-mesh outbound cluster of this proxy."""
    by_entry: dict[int, tuple[Entry, dict[str, str]]] = {}
    if ctx.mesh.mtls_staging:  # mTLS is being turned on: every inbound stays Permissive until it is done
        modes = {}
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        chain = entry.message.filter_chains[index]  # type: ignore[attr-defined]
        if not is_plaintext(chain) and chain.HasField("transport_socket"):
            by_entry.setdefault(id(entry), (entry, {}))[1][chain.name] = key
    for entry, mesh_chains in by_entry.values():
        listener = rs.edit(entry)
        chains = dict(entry.chains)
        permissive = {n for n, k in mesh_chains.items() if modes.get(k) == "Permissive"}
        strict = {n for n, k in mesh_chains.items() if modes.get(k) == "Strict"}
        for plain, mesh_chain in make_permissive(listener, permissive).items():  # type: ignore[arg-type]
            chains[plain] = mesh_chains[mesh_chain]
        for plain in make_strict(listener, strict):  # type: ignore[arg-type]
            chains.pop(plain, None)
        entry.chains = chains
        if not params.empty():
            for chain in listener.filter_chains:  # type: ignore[attr-defined]
                if chain.name in mesh_chains:
                    _edit_socket(chain.transport_socket, tls_pb2.DownstreamTlsContext, params)
    if params.empty():
        return

    def plan(entry: Entry) -> tuple[object, object] | None:
        socket = entry.message.transport_socket  # type: ignore[attr-defined]
        if socket.name != TLS_SOCKET or is_external(entry.service):
            return None  # plaintext, or TLS to a MeshExternalService (its own tls block governs it, as in Kuma)

        def edit(cluster: cluster_pb2.Cluster) -> None:
            _edit_socket(cluster.transport_socket, tls_pb2.UpstreamTlsContext, params)
        return params, edit

    edit_outbound_clusters(rs, ctx, KIND, plan)  # type: ignore[arg-type]
