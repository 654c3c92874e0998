"""The agent's scrape: its own gauges and counters followed by Envoy's Prometheus stats, in one response, served on
`--metrics-port` and on the hijacker socket that a MeshMetric Prometheus listener forwards to.

With a MeshMetric conf from the CP, Envoy's stats are filtered by its profiles and the configured applications'
metrics are merged in (meshmetric.py). One endpoint per proxy keeps scrape configs simple on VMs; Envoy's admin
stays on its private socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dpagent.agent.envoy import EnvoyAdmin
from dpagent.agent.http import Response
from dpagent.agent.meshmetric import MergedScrape, MetricsConf, conf_summary
from dpagent.agent.otlp import OtlpPusher
from dpagent.log import kv

log = logging.getLogger("dpagent.metrics")

METRICS_SOCKET = "dpagent-metrics.sock"  # in the work dir (the CP's names.METRICS_HIJACKER_SOCKET)
MESHMETRIC_PATH = "/meshmetric"  # on the dynconf socket (the CP's names.DYNCONF_MESHMETRIC_PATH)
_HEADERS = {"content-type": "text/plain; version=0.0.4; charset=utf-8"}


class Metrics:
    def __init__(self, collect: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """`collect` returns name -> (type, value) for the agent's own series."""
        self.collect = collect
        self.admin: EnvoyAdmin | None = None
        self.merged = MergedScrape(self._envoy)
        self.app_address = "127.0.0.1"  # where applications without an `address` are scraped
        self.otlp = OtlpPusher(self._scrape_text, {})  # resource attributes set once the Dataplane is known

    async def _envoy(self, path: str) -> str | None:
        if self.admin is None:
            return None
        try:
            resp = await self.admin.get(path)
        except Exception:  # Envoy restarting: the agent's own series still answer
            return None
        return resp.text if resp.status_code == 200 else None

    def apply_conf(self, body: bytes | None) -> None:
        """A new `/meshmetric` body from the dynconf socket (None: the policy is gone)."""
        conf = MetricsConf.parse(body, self.app_address) if body is not None else None
        self.merged.set_conf(conf)
        self.otlp.set_backends(conf.otel if conf is not None else ())
        kv(log, logging.INFO, "MeshMetric conf applied", **conf_summary(conf))

    def agent_text(self) -> str:
        lines = []
        for name, (kind, value) in sorted(self.collect().items()):
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"

    async def _scrape_text(self) -> str:
        return self.agent_text() + await self.merged.scrape()

    async def scrape(self) -> bytes:
        return (await self._scrape_text()).encode()

    async def handle(self, method: str, target: str) -> Response:
        if target.split("?", 1)[0] != "/metrics":
            return 404, _HEADERS, b"404: not found (only GET /metrics is served here)\n"
        return 200, _HEADERS, await self.scrape()

    async def handle_hijacked(self, method: str, target: str) -> Response:
        """Envoy's Prometheus listener already matched the backend's path; any path it forwards is the scrape."""
        return 200, _HEADERS, await self.scrape()

    async def aclose(self) -> None:
        await self.otlp.aclose()
        await self.merged.aclose()
