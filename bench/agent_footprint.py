"""The agent's RSS and CPU while idle beside a running Envoy, sampled side by side with Envoy's own, and the cost
of a MeshMetric scrape.

Targets: agent ≤ 45 MB RSS and ≤ 0.1 % of one core idle; a scrape of Envoy + one application with 2,000 series
adds ≤ 20 ms p50 to today's Envoy-only scrape. The bench plays the CP's part for MeshMetric: it serves the
`/meshmetric` conf on the agent's dynconf socket, as Envoy does. Also prints the import cost of the agent's stack.
Usage: python bench/agent_footprint.py [--seconds 60] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import json
import signal
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
from _agent import agent_command, popen, start_cp
from testlib import free_port

IMPORTS = {
    "python + asyncio + ssl": "import asyncio, ssl",
    "agent stack (dpagent run)": "import dpagent.cli.main, dpagent.cli.run, dpagent.agent.app",
    "same + aiohttp (not used)": "import dpagent.cli.main, dpagent.cli.run, dpagent.agent.app, aiohttp",
    "same + gRPC (OTel backend)": "import dpagent.cli.main, dpagent.cli.run, dpagent.agent.app, grpc.aio",
}


def import_rss(stmt: str) -> float:
    code = f"{stmt}; import psutil; print(psutil.Process().memory_info().rss)"
    return int(subprocess.check_output([sys.executable, "-c", code])) / 2**20


APP_SERIES = 2000


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's listener
    body = b""
    etag = ""

    def do_GET(self) -> None:
        if self.body and self.headers.get("if-none-match") == self.etag:  # Envoy's dynconf routes answer 304
            self.send_response(304)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if not self.body:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("etag", self.etag)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def address_string(self) -> str:
        return "local"

    def log_message(self, *args: Any) -> None:
        pass


class _UnixHttp(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve_app() -> int:
    """An application exposing APP_SERIES series of its own."""
    body = ("# TYPE app_latency_seconds gauge\n" + "".join(
        f'app_latency_seconds{{shard="{i}",route="/orders"}} {i / 1000}\n' for i in range(APP_SERIES))).encode()
    handler = type("App", (_Quiet,), {"body": body, "etag": "app"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def serve_dynconf(work_dir: Path) -> type[_Quiet]:
    """The agent's dynconf socket, as Envoy serves it from the CP's listener; set `.body` to hand out a conf."""
    handler = type("Dynconf", (_Quiet,), {})
    server = _UnixHttp(str(work_dir / "dpagent-dynconf.sock"), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return handler


def scrape_ms(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.get(url)
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
    return out


def measure_scrapes(metrics_url: str, dynconf: type[_Quiet], app_port: int, n: int) -> dict[str, Any]:
    today = scrape_ms(metrics_url, n)  # no MeshMetric: agent series + all of Envoy's stats
    conf = {"observability": {"metrics": {"applications": [{"name": "app", "port": app_port, "path": "/metrics"}],
                                          "backends": [], "sidecar": {"profiles": {}}, "extraLabels": {}}}}
    dynconf.body, dynconf.etag = json.dumps(conf).encode(), "with-app"
    deadline = time.monotonic() + 10
    while "app_latency_seconds" not in httpx.get(metrics_url, timeout=10).text:
        if time.monotonic() > deadline:
            raise SystemExit("the agent did not pick up the MeshMetric conf from the dynconf socket")
        time.sleep(0.1)
    merged = scrape_ms(metrics_url, n)
    lines = httpx.get(metrics_url, timeout=10).text.count("\n")
    return {"today": today, "merged": merged, "lines": lines}


def idle(agent: psutil.Process, envoy: psutil.Process, seconds: float) -> tuple[float, float, float, float, float]:
    """(agent max RSS, agent CPU %, Envoy max RSS, Envoy CPU %, wall seconds) while nothing is asked of them."""
    a_cpu0, e_cpu0 = agent.cpu_times(), envoy.cpu_times()
    t0 = time.monotonic()
    a_rss, e_rss = [], []
    while time.monotonic() - t0 < seconds:
        a_rss.append(agent.memory_info().rss)
        e_rss.append(envoy.memory_info().rss)
        time.sleep(1)
    wall = time.monotonic() - t0
    a_cpu1, e_cpu1 = agent.cpu_times(), envoy.cpu_times()
    a_pct = 100 * ((a_cpu1.user + a_cpu1.system) - (a_cpu0.user + a_cpu0.system)) / wall
    e_pct = 100 * ((e_cpu1.user + e_cpu1.system) - (e_cpu0.user + e_cpu0.system)) / wall
    return max(a_rss), a_pct, max(e_rss), e_pct, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()
    cp, tmp = start_cp()
    port, metrics_port = free_port(), free_port()
    work_dir = tmp / "work"
    work_dir.mkdir()
    app_port = serve_app()
    proc = popen([*agent_command(cp, tmp, port), "--work-dir", str(work_dir), "--metrics-port", str(metrics_port)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise SystemExit("agent did not become ready")
        agent = psutil.Process(proc.pid)
        [envoy] = [c for c in agent.children() if c.name() == "envoy"]
        a_rss, a_pct, e_rss, e_pct, wall = idle(agent, envoy, args.seconds)
        dynconf = serve_dynconf(work_dir)  # from here on the agent polls a dynconf socket, as under a real CP
        scrapes = measure_scrapes(f"http://127.0.0.1:{metrics_port}/metrics", dynconf, app_port, args.scrapes)
        mm_rss, mm_pct, _, _, _ = idle(agent, envoy, args.seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        cp.close()
    mb = 2**20
    print(f"idle footprint over {wall:.0f} s (max RSS, CPU as % of one core)")
    print(f"  dpagent  {a_rss / mb:6.1f} MB   {a_pct:6.3f} %   (today: no MeshMetric)")
    print(f"  dpagent  {mm_rss / mb:6.1f} MB   {mm_pct:6.3f} %   (MeshMetric with an app, after "
          f"{2 * args.scrapes} scrapes; conf polled on dynconf)")
    print(f"  envoy    {e_rss / mb:6.1f} MB   {e_pct:6.3f} %")
    print(f"  ratio agent/envoy RSS {a_rss / e_rss:.2f}")
    ok = max(a_rss, mm_rss) / mb <= 45 and max(a_pct, mm_pct) <= 0.1
    print(f"  target agent ≤ 45 MB and ≤ 0.1 %: {'PASS' if ok else 'FAIL'}")
    today, merged = statistics.median(scrapes["today"]), statistics.median(scrapes["merged"])
    p95 = statistics.quantiles(scrapes["merged"], n=20)[-1]
    print(f"scrape over {args.scrapes} requests each (p50)")
    print(f"  today: agent + Envoy (no MeshMetric)      {today:6.2f} ms")
    print(f"  MeshMetric: Envoy (Basic) + app ({APP_SERIES} series) {merged:6.2f} ms  (p95 {p95:.2f} ms, "
          f"{scrapes['lines']} lines)")
    print(f"  added p50 {merged - today:+.2f} ms; target ≤ 20 ms: {'PASS' if merged - today <= 20 else 'FAIL'}")
    print("import cost (RSS of a fresh interpreter after the imports)")
    for label, stmt in IMPORTS.items():
        print(f"  {label:<28} {import_rss(stmt):6.1f} MB")


if __name__ == "__main__":
    main()
