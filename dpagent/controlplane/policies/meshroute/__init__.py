"""What MeshHTTPRoute and MeshTCPRoute share: backendRef schema and route-only targetRef validation (refs.py),
cluster names and resolving a backendRef to one (names.py), the clusters and endpoints a backend needs
(backends.py, added to a proxy by xds.py) and the `inspect` warnings for refs that cannot carry traffic
(warnings.py). Kuma keeps the same split (`core/xds/meshroute`). The envelope and TargetRef are the generic ones
(policies/envelope.py, policies/targetref.py)."""
