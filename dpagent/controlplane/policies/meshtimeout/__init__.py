"""MeshTimeout (Kuma order 1000): api.py schema, defaults and validation · plugin.py matched policies → effective
timeouts per destination and per inbound · xds.py writing them onto clusters, routes, HCMs and tcp_proxies."""

from dpagent.controlplane.policies.meshtimeout.plugin import MeshTimeoutPlugin, TimeoutRules

__all__ = ["MeshTimeoutPlugin", "TimeoutRules"]
