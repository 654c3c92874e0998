"""MeshProxyPatch: raw Envoy modifications (clusters, listeners, network and HTTP filters, virtual hosts), applied
after every other policy (Kuma order 9999). api.py: spec and validation · plugin.py: matched → ordered modifications
· xds.py: apply them to the ResourceSet · jsonpatch.py: RFC 6902 · protos.py: YAML ↔ Envoy messages."""

from dpagent.controlplane.policies.meshproxypatch.plugin import MeshProxyPatchPlugin, PatchRules

__all__ = ["MeshProxyPatchPlugin", "PatchRules"]
