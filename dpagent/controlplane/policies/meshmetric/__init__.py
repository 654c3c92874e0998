"""MeshMetric: what the agent's merged scrape holds and where Prometheus finds it (Kuma order 1500).
api.py: spec and validation · plugin.py: matched policies → effective conf · xds.py: Prometheus listener + dynconf."""

from dpagent.controlplane.policies.meshmetric.plugin import MeshMetricPlugin, MmRules

__all__ = ["MeshMetricPlugin", "MmRules"]
