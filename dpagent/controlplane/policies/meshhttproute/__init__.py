"""MeshHTTPRoute (Kuma order 100): api.py schema and validation · plugin.py matched policies → rules per
destination · ordering.py how several routes' rules for one destination merge and sort · routes.py the outbound's
Envoy RouteConfiguration · xds.py serving it over RDS. Shared with MeshTCPRoute: policies/meshroute (refs, names,
backend clusters and endpoints, warnings)."""

from dpagent.controlplane.policies.meshhttproute.plugin import HttpRouteRules, MeshHTTPRoutePlugin

__all__ = ["HttpRouteRules", "MeshHTTPRoutePlugin"]
