"""Agent start → `/ready` 200 against a loopback bootstrap server, beside Envoy alone with the same bootstrap.

Prints the median and worst of N runs for both and their ratio. Target: agent ≤ 1.0 s.
Usage: python bench/time_to_ready.py [--runs 10]
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx
from _agent import agent_command, popen, start_cp
from testlib import envoy_bootstrap, free_port

from dpagent.agent.envoy import find_envoy


def agent_once(cp, tmp: Path) -> float:
    port = free_port()
    t0 = time.monotonic()
    proc = popen(agent_command(cp, tmp, port))
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"agent exited with {proc.returncode}")
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def envoy_once(tmp: Path) -> float:
    wd = tmp / f"envoy-{time.monotonic_ns()}"
    wd.mkdir()
    boot = wd / "bootstrap.json"
    boot.write_text(json.dumps(envoy_bootstrap(str(wd), free_port())))
    t0 = time.monotonic()
    proc = subprocess.Popen([find_envoy(), "-c", str(boot), "--disable-hot-restart", "--log-level", "error",
                             "--concurrency", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    transport = httpx.HTTPTransport(uds=str(wd / "envoy-admin.sock"))
    try:
        with httpx.Client(transport=transport, base_url="http://admin") as c:
            while True:
                try:
                    if c.get("/ready", timeout=1).status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    cp, tmp = start_cp()
    _ = base64  # the bootstrap server encodes; kept for clarity of the wire format
    try:
        agent = [agent_once(cp, tmp) for _ in range(args.runs)]
        envoy = [envoy_once(tmp) for _ in range(args.runs)]
    finally:
        cp.close()
    a, e = statistics.median(agent), statistics.median(envoy)
    print(f"time to ready over {args.runs} runs (median / worst)")
    print(f"  envoy alone          {e * 1000:7.1f} ms / {max(envoy) * 1000:7.1f} ms")
    print(f"  dpagent run (total)  {a * 1000:7.1f} ms / {max(agent) * 1000:7.1f} ms")
    print(f"  agent overhead       {(a - e) * 1000:7.1f} ms   ratio agent/envoy {a / e:5.2f}x")
    print(f"  target ≤ 1000 ms: {'PASS' if max(agent) <= 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
