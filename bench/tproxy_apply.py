"""Install/uninstall latency of the default transparent-proxy ruleset inside a fresh network namespace.

Usage (root): .venv/bin/python bench/tproxy_apply.py [-n RUNS] [--variant nft|legacy|both]
Target: median and worst ≤ 200 ms for each of install and uninstall. Never touches the host's own rules.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transparent_proxy.apply import install, uninstall
from transparent_proxy.config import build_config
from transparent_proxy.host import HostFacts, tools_for
from transparent_proxy.runner import SubprocessRunner

TARGET_MS = 200.0


def bench(variant: str, runs: int) -> dict[str, list[float]]:
    ns = f"dpagent-t-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        runner = SubprocessRunner(prefix=("ip", "netns", "exec", ns))
        tools = tools_for(runner, variant)  # type: ignore[arg-type]
        if tools is None:
            raise SystemExit(f"iptables-{variant} not found")
        cfg = build_config({}, {})
        facts = HostFacts(agent_uid=5678, tools=tools, ipv6=False)
        times: dict[str, list[float]] = {"install": [], "uninstall": []}
        for _ in range(runs):
            for name, fn in (("install", install), ("uninstall", uninstall)):
                t0 = time.perf_counter()
                out = fn(cfg, facts, runner, sleep=lambda s: None)
                times[name].append((time.perf_counter() - t0) * 1000)
                assert out.changed, f"{name} changed nothing"
        return times
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--variant", choices=["nft", "legacy", "both"], default="both")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (creates a network namespace)")
    print(f"{'variant':8} {'op':10} {'runs':>5} {'median ms':>10} {'worst ms':>9} {'target':>7}  ok")
    ok = True
    for variant in (["nft", "legacy"] if args.variant == "both" else [args.variant]):
        for op, samples in bench(variant, args.runs).items():
            med, worst = statistics.median(samples), max(samples)
            good = med <= TARGET_MS and worst <= TARGET_MS
            ok &= good
            print(f"{variant:8} {op:10} {len(samples):5d} {med:10.1f} {worst:9.1f} {TARGET_MS:7.0f}  "
                  f"{'yes' if good else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
