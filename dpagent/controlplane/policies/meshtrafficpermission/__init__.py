"""MeshTrafficPermission: which peer services may open connections to a proxy's inbounds (Kuma order 1100)."""

from dpagent.controlplane.policies.meshtrafficpermission.plugin import (
    InboundPermissions,
    MeshTrafficPermissionPlugin,
    MtpRules,
    PeerRule,
)

__all__ = ["InboundPermissions", "MeshTrafficPermissionPlugin", "MtpRules", "PeerRule"]
