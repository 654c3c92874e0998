"""`GET /metrics` on the agent: its own gauges and counters followed by Envoy's Prometheus stats, in one scrape.

One endpoint per proxy keeps scrape configs simple on VMs; Envoy's admin stays on its private socket.
"""

from __future__ import annotations

from collections.abc import Callable

from dpagent.agent.envoy import EnvoyAdmin
from dpagent.agent.http import Response

_HEADERS = {"content-type": "text/plain; version=0.0.4; charset=utf-8"}


class Metrics:
    def __init__(self, collect: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """`collect` returns name -> (type, value) for the agent's own series."""
        self.collect = collect
        self.admin: EnvoyAdmin | None = None

    def agent_text(self) -> str:
        lines = []
        for name, (kind, value) in sorted(self.collect().items()):
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"

    async def handle(self, method: str, target: str) -> Response:
        if target.split("?", 1)[0] != "/metrics":
            return 404, _HEADERS, b"404: not found (only GET /metrics is served here)\n"
        body = self.agent_text()
        if self.admin is not None:
            try:
                resp = await self.admin.get("/stats/prometheus")
                if resp.status_code == 200:
                    body += resp.text
            except Exception:  # Envoy restarting: the agent's own series still answer
                body += "# envoy stats unavailable\n"
        return 200, _HEADERS, body.encode()
