"""MeshFaultInjection: aborts, delays and response throttling on a proxy's own HTTP inbounds (Kuma order 800).
api.py: spec and validation · plugin.py: matched policies → faults per inbound · xds.py: Envoy fault filters."""

from dpagent.controlplane.policies.meshfaultinjection.plugin import InboundFaults, MeshFaultInjectionPlugin, MfiRules

__all__ = ["InboundFaults", "MeshFaultInjectionPlugin", "MfiRules"]
