"""MeshRetry (Kuma order 1400): api.py schema and validation · plugin.py matched policies → the effective conf per
destination · retry.py conf → Envoy retry policy / connect attempts · xds.py putting them on the outbound routes
(RDS, shared per service and conf) and tcp_proxies."""

from dpagent.controlplane.policies.meshretry.plugin import MeshRetryPlugin, RetryRules

__all__ = ["MeshRetryPlugin", "RetryRules"]
