"""MeshTCPRoute (Kuma order 200): api.py schema and validation · tcp.py the outbound's tcp_proxy. Shared with
MeshHTTPRoute: policies/meshroute (refs, names, backend clusters and endpoints)."""
