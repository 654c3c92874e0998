"""MeshAccessLog (Kuma order 600): api.py backends, formats and validation · formats.py Kuma's placeholders and
default formats · plugin.py matched policies → backends per destination and per inbound · xds.py Envoy access
loggers on HCMs and tcp_proxies."""

from dpagent.controlplane.policies.meshaccesslog.plugin import AccessLogRules, MeshAccessLogPlugin

__all__ = ["AccessLogRules", "MeshAccessLogPlugin"]
