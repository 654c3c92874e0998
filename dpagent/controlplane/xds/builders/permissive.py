"""Permissive inbounds: one mesh-mTLS chain and one plaintext chain per inbound, told apart by a TLS inspector.

A mesh peer is recognised by the ALPN value its client TLS context offers (`kuma`, as Kuma's proxies offer), not by
"it speaks TLS": an app's own TLS then matches neither chain, so on a transparent-proxy capture listener it falls to
the passthrough default chain and reaches the app untouched, as in Kuma. The plaintext chain has the same filters
minus the transport socket, so policies that edit inbound chains (timeouts, rate limits, logs) apply to both; it
carries no peer identity, so MeshTrafficPermission skips it (see `is_plaintext`)."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from dpagent.controlplane.xds.builders.listener import TLS_INSPECTOR, tls_inspector
from dpagent.controlplane.xds.builders.tls import MESH_ALPN

PLAINTEXT_SUFFIX = ":plaintext"
RAW_BUFFER = "raw_buffer"


def is_plaintext(chain: listener_components_pb2.FilterChain) -> bool:
    return chain.filter_chain_match.transport_protocol == RAW_BUFFER


def plaintext_name(chain_name: str) -> str:
    return chain_name + PLAINTEXT_SUFFIX


def _replace_chains(listener: listener_pb2.Listener, chains: list[listener_components_pb2.FilterChain]) -> None:
    copies = []
    for c in chains:
        copy = listener_components_pb2.FilterChain()
        copy.CopyFrom(c)
        copies.append(copy)
    del listener.filter_chains[:]
    listener.filter_chains.extend(copies)


def make_permissive(listener: listener_pb2.Listener, chain_names: set[str]) -> dict[str, str]:
    """Split each named mTLS chain into (mesh mTLS by ALPN, plaintext); returns {plaintext chain: mesh chain}.
    Idempotent: a chain already split is left alone."""
    existing = {c.name for c in listener.filter_chains}
    added: dict[str, str] = {}
    out: list[listener_components_pb2.FilterChain] = []
    for chain in listener.filter_chains:
        out.append(chain)
        if chain.name not in chain_names or not chain.HasField("transport_socket") \
                or plaintext_name(chain.name) in existing:
            continue
        plain = listener_components_pb2.FilterChain()
        plain.CopyFrom(chain)
        plain.ClearField("transport_socket")
        plain.name = plaintext_name(chain.name)
        plain.filter_chain_match.transport_protocol = RAW_BUFFER
        chain.filter_chain_match.transport_protocol = "tls"
        chain.filter_chain_match.application_protocols[:] = list(MESH_ALPN)
        out.append(plain)
        added[plain.name] = chain.name
    if added:
        _replace_chains(listener, out)
        if not any(f.name == TLS_INSPECTOR for f in listener.listener_filters):
            listener.listener_filters.append(tls_inspector())
    return added


def make_strict(listener: listener_pb2.Listener, chain_names: set[str]) -> set[str]:
    """Undo `make_permissive` for the named mesh chains; returns the plaintext chain names removed."""
    drop = {plaintext_name(n) for n in chain_names} & {c.name for c in listener.filter_chains}
    if not drop:
        return set()
    kept = [c for c in listener.filter_chains if c.name not in drop]
    for c in kept:
        if c.name in chain_names:
            c.filter_chain_match.transport_protocol = ""
            del c.filter_chain_match.application_protocols[:]
    _replace_chains(listener, kept)
    if not any(is_plaintext(c) for c in listener.filter_chains):
        inspectors = [f for f in listener.listener_filters if f.name != TLS_INSPECTOR]
        copies = []
        for f in inspectors:
            copy = listener_components_pb2.ListenerFilter()
            copy.CopyFrom(f)
            copies.append(copy)
        del listener.listener_filters[:]
        listener.listener_filters.extend(copies)
    return drop
