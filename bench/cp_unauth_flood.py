"""CP memory under a flood of unauthenticated `/certificates` requests with random long names (issue 9, item 3).

Why: every such request used to leave a rate-limit entry behind, so an attacker without any token could grow the
CP's memory without bound. Starts a real `dpagent cp run`, sends the requests over HTTPS from this process, and
prints the CP's RSS before and after. With `--baseline DIR` (a checkout of older code, e.g. made with
`git archive <commit> dpagent | tar -x -C DIR`) the same run is repeated against it and printed side by side.

    python bench/cp_unauth_flood.py [--requests 10000] [--name-length 4000] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import time
from pathlib import Path

import httpx
import psutil
from _cp_source import ROOT, cp_from_source
from testlib import LocalControlPlane

MIB = 1024 * 1024


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


async def _flood(cp: LocalControlPlane, n: int, name_length: int, concurrency: int = 16) -> dict[int, int]:
    """Send n requests, each naming a fresh random dataplane with a garbage token; count answers by status."""
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    statuses: dict[int, int] = {}
    todo = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in todo:
            name = secrets.token_hex(name_length // 2)
            r = await client.post("/certificates", json={"mesh": "default", "name": name, "csr": "x"},
                                  headers={"authorization": "Bearer not.a.token"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=cp.url, verify=ctx, timeout=30, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def run(source: Path, n: int, name_length: int) -> tuple[float, float, float, dict[int, int], float]:
    """(RSS before, right after, after 3 s settle, statuses, seconds) for a CP running the code under `source`."""
    with cp_from_source(source) as (cp, pid, _):
        asyncio.run(_flood(cp, 200, name_length))  # warm-up: code paths, TLS, allocator pools
        before = _rss(pid)
        t0 = time.monotonic()
        statuses = asyncio.run(_flood(cp, n, name_length))
        took = time.monotonic() - t0
        after = _rss(pid)
        time.sleep(3)
        return before, after, _rss(pid), statuses, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--name-length", type=int, default=4000)
    ap.add_argument("--baseline", type=Path, help="directory holding an older dpagent/ package to compare with")
    args = ap.parse_args()
    runs = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    results = [(label, run(src, args.requests, args.name_length)) for label, src in runs]
    print(f"{args.requests} unauthenticated POST /certificates, random {args.name_length}-char names, garbage token")
    print(f"{'':<12}{'RSS before':>12}{'after':>10}{'after 3s':>10}{'growth':>10}{'req/s':>8}  statuses")
    for label, (before, after, settled, statuses, took) in results:
        print(f"{label:<12}{before:>9.1f} MiB{after:>6.1f} MiB{settled:>6.1f} MiB{settled - before:>+6.1f} MiB"
              f"{args.requests / took:>8.0f}  {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
