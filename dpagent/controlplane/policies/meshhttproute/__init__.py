"""MeshHTTPRoute (Kuma order 100): api.py schema and validation · ordering.py how several routes' rules for one
destination merge and sort · routes.py the outbound's Envoy RouteConfiguration. Shared with MeshTCPRoute:
policies/meshroute (refs, names, backend clusters and endpoints)."""
