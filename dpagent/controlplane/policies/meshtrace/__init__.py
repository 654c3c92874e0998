"""MeshTrace: Envoy's HTTP tracing toward Zipkin, Datadog or an OpenTelemetry collector (Kuma order 700).
api.py: spec and validation · plugin.py: matched policies → the proxy's effective conf · xds.py: HCM tracing and
the collector cluster."""

from dpagent.controlplane.policies.meshtrace.plugin import MeshTracePlugin, TraceRules

__all__ = ["MeshTracePlugin", "TraceRules"]
