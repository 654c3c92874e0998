"""MeshCircuitBreaker: connection limits and outlier detection on the clusters a proxy sends to (Kuma order 1300).
api.py: spec and validation · plugin.py: matched policies → effective conf per outbound service and inbound ·
xds.py: `circuit_breakers`, `outlier_detection` and the panic threshold on those clusters."""

from dpagent.controlplane.policies.meshcircuitbreaker.plugin import McbRules, MeshCircuitBreakerPlugin

__all__ = ["McbRules", "MeshCircuitBreakerPlugin"]
