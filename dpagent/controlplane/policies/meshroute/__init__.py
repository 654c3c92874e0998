"""What MeshHTTPRoute and MeshTCPRoute share: targetRef/backendRef schema and validation (refs.py), the resource
envelope (envelope.py), subset cluster naming (names.py) and the clusters and endpoints a backendRef needs
(backends.py). Kuma keeps the same split (`core/xds/meshroute`)."""
