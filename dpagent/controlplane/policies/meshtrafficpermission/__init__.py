"""MeshTrafficPermission: which peers may open connections to a proxy's inbounds (Kuma order 1100).
api.py: spec and validation · plugin.py: matched policies → per-inbound permissions · xds.py: RBAC on the
inbound filter chains (network) and inbound routes (HTTP)."""

from dpagent.controlplane.policies.meshtrafficpermission.plugin import (
    InboundPermissions,
    MeshTrafficPermissionPlugin,
    MtpRules,
    PeerRule,
)

__all__ = ["InboundPermissions", "MeshTrafficPermissionPlugin", "MtpRules", "PeerRule"]
