"""The agent's RSS and CPU while idle beside a running Envoy, sampled side by side with Envoy's own.

Target: agent ≤ 45 MB RSS and ≤ 0.1 % of one core. Also prints the import cost of the agent's stack.
Usage: python bench/agent_footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

import httpx
import psutil
from _agent import agent_command, popen, start_cp
from testlib import free_port

IMPORTS = {
    "python + asyncio + ssl": "import asyncio, ssl",
    "agent stack (dpagent run)": "import dpagent.cli.main, dpagent.cli.run, dpagent.agent.app",
    "same + aiohttp (not used)": "import dpagent.cli.main, dpagent.cli.run, dpagent.agent.app, aiohttp",
}


def import_rss(stmt: str) -> float:
    code = f"{stmt}; import psutil; print(psutil.Process().memory_info().rss)"
    return int(subprocess.check_output([sys.executable, "-c", code])) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    cp, tmp = start_cp()
    port = free_port()
    proc = popen(agent_command(cp, tmp, port))
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
        a_cpu0, e_cpu0 = agent.cpu_times(), envoy.cpu_times()
        t0 = time.monotonic()
        a_rss, e_rss = [], []
        while time.monotonic() - t0 < args.seconds:
            a_rss.append(agent.memory_info().rss)
            e_rss.append(envoy.memory_info().rss)
            time.sleep(1)
        wall = time.monotonic() - t0
        a_cpu1, e_cpu1 = agent.cpu_times(), envoy.cpu_times()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        cp.close()
    a_pct = 100 * ((a_cpu1.user + a_cpu1.system) - (a_cpu0.user + a_cpu0.system)) / wall
    e_pct = 100 * ((e_cpu1.user + e_cpu1.system) - (e_cpu0.user + e_cpu0.system)) / wall
    mb = 2**20
    print(f"idle footprint over {wall:.0f} s (max RSS, CPU as % of one core)")
    print(f"  dpagent  {max(a_rss) / mb:6.1f} MB   {a_pct:6.3f} %")
    print(f"  envoy    {max(e_rss) / mb:6.1f} MB   {e_pct:6.3f} %")
    print(f"  ratio agent/envoy RSS {max(a_rss) / max(e_rss):.2f}")
    ok = max(a_rss) / mb <= 45 and a_pct <= 0.1
    print(f"  target agent ≤ 45 MB and ≤ 0.1 %: {'PASS' if ok else 'FAIL'}")
    print("import cost (RSS of a fresh interpreter after the imports)")
    for label, stmt in IMPORTS.items():
        print(f"  {label:<28} {import_rss(stmt):6.1f} MB")


if __name__ == "__main__":
    main()
