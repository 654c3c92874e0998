"""MeshExternalService: a destination outside the mesh that apps call like a mesh service (by
`<name>.extsvc.mesh.local` or an outbound), with TLS origination. api.py: spec, validation, generation-ready form
and VIPs · plugin.py: its registry entry · xds.py: cluster, route, capture chain or outbound listener, DNS record."""

from dpagent.controlplane.policies.meshexternalservice.plugin import MeshExternalServicePlugin

__all__ = ["MeshExternalServicePlugin"]
