"""MeshRateLimit: per-proxy token buckets on a proxy's own inbounds (Kuma order 900).
api.py: spec and validation · plugin.py: matched policies → limits per inbound · xds.py: Envoy local rate limits."""

from dpagent.controlplane.policies.meshratelimit.plugin import MeshRateLimitPlugin, MrlRules

__all__ = ["MeshRateLimitPlugin", "MrlRules"]
