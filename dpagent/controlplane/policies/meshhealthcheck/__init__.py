"""MeshHealthCheck: active health checks from a proxy to the instances of its destinations (Kuma order 1200).
api.py: spec and validation · plugin.py: matched policies → effective conf per destination · xds.py: one
`health_checks[]` entry on each destination's outbound clusters, the checker chosen by the service's protocol."""

from dpagent.controlplane.policies.meshhealthcheck.plugin import MeshHealthCheckPlugin, MhcRules

__all__ = ["MeshHealthCheckPlugin", "MhcRules"]
