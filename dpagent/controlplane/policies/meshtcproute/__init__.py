"""MeshTCPRoute (Kuma order 200): api.py schema and validation · plugin.py matched policies → rules per destination
· tcp.py the outbound's tcp_proxy · xds.py putting it on the outbound listener or capture chain. Shared with
MeshHTTPRoute: policies/meshroute (refs, names, backend clusters and endpoints, warnings)."""

from dpagent.controlplane.policies.meshtcproute.plugin import MeshTCPRoutePlugin, TcpRouteRules

__all__ = ["MeshTCPRoutePlugin", "TcpRouteRules"]
