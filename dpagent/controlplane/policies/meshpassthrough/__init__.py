"""MeshPassthrough: which traffic leaving the mesh the transparent proxy lets through (Kuma order 500).
api.py: spec and validation · plugin.py: matched policies (or the Mesh's passthrough flag) → the proxy's mode and
destinations · xds.py: the outbound capture listener's passthrough chains."""

from dpagent.controlplane.policies.meshpassthrough.plugin import MeshPassthroughPlugin, PassthroughRules

__all__ = ["MeshPassthroughPlugin", "PassthroughRules"]
