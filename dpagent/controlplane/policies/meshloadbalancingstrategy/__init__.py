"""MeshLoadBalancingStrategy (Kuma order 400): api.py schema and validation · plugin.py matched policies → merged
conf per destination · lb.py the Envoy fields a conf means (cluster lb policy, route hash policies, endpoint
priorities by zone) · xds.py putting them on the proxy's outbound clusters, endpoints and routes."""

from dpagent.controlplane.policies.meshloadbalancingstrategy.plugin import LbRules, MeshLoadBalancingStrategyPlugin

__all__ = ["LbRules", "MeshLoadBalancingStrategyPlugin"]
