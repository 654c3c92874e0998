"""MeshTLS: per-proxy Strict/Permissive inbounds and mesh-wide TLS versions and ciphers (Kuma order 300).
api.py: spec and validation · plugin.py: matched policies → mode per inbound, TLS params · xds.py: Envoy edits."""

from dpagent.controlplane.policies.meshtls.plugin import MeshTLSPlugin, MtlsRules

__all__ = ["MeshTLSPlugin", "MtlsRules"]
