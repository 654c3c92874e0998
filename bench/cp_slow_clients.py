"""Can an agent still bootstrap while slow clients hold the DP server open? (issue 9, item 5)

Why: connections that never finish their request headers (slowloris) used to be kept forever; past the CP's
open-file limit a real agent's bootstrap timed out and every refused accept was logged with a traceback. Starts a
real `dpagent cp run` with a 1,024 open-file soft limit, opens 1,100 TLS connections that send half a header, then
times one real bootstrap and counts the CP's log lines. `--baseline DIR` repeats it against older code.

    python bench/cp_slow_clients.py [--connections 1100] [--nofile 1024] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import time
from pathlib import Path

import httpx
from _cp_source import ROOT, cp_from_source
from testlib import LocalControlPlane

DATAPLANE = {"type": "Dataplane", "mesh": "default", "name": "patient", "networking": {
    "address": "127.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "patient"}}]}}


async def _attack_and_bootstrap(cp: LocalControlPlane, token: str, connections: int, log: Path) -> tuple[int, str,
                                                                                                      int, int]:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    writers: list[asyncio.StreamWriter] = []

    async def slow() -> None:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", cp.dp_port, ssl=ctx,
                                                                  server_hostname="127.0.0.1"), 20)
        except (OSError, TimeoutError):
            return
        w.write(b"POST /bootstrap HTTP/1.1\r\nHost: cp\r\nX-Slow: ")
        writers.append(w)

    await asyncio.gather(*(slow() for _ in range(connections)))
    first_line = len(log.read_bytes().splitlines())
    t0 = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=cp.url, verify=ctx, timeout=30, trust_env=False) as c:
            r = await c.post("/bootstrap", json={"mesh": "default", "name": "patient", "dataplaneToken": token})
        outcome = f"HTTP {r.status_code} in {time.monotonic() - t0:.2f}s"
    except httpx.HTTPError as e:
        outcome = f"{type(e).__name__} after {time.monotonic() - t0:.1f}s"
    await asyncio.sleep(5)
    lines = log.read_bytes().splitlines()[first_line:]
    for w in writers:
        w.close()
    return len(writers), outcome, len(lines), sum(1 for line in lines if b"Traceback" in line)


def run(source: Path, connections: int, nofile: int) -> tuple[int, str, int, int]:
    with cp_from_source(source, nofile=nofile) as (cp, _, log):
        assert httpx.put(f"{cp.api}/meshes/default/dataplanes/patient", json=DATAPLANE).status_code == 201
        token = httpx.post(f"{cp.api}/tokens/dataplane", json={"name": "patient", "mesh": "default",
                                                               "validFor": "1h"}).text
        return asyncio.run(_attack_and_bootstrap(cp, token, connections, log))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1100)
    ap.add_argument("--nofile", type=int, default=1024, help="the CP's soft open-file limit")
    ap.add_argument("--baseline", type=Path, help="directory holding an older dpagent/ package to compare with")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this client needs a descriptor per connection
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 512)), hard))
    runs = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(f"{args.connections} half-sent TLS requests against a CP with {args.nofile} open files, then one bootstrap")
    print(f"{'':<12}{'opened':>10}  {'bootstrap':<28}{'CP log lines':>13}{'tracebacks':>12}  (over ~5 s)")
    for label, src in runs:
        opened, outcome, lines, tracebacks = run(src, args.connections, args.nofile)
        print(f"{label:<12}{opened:>10}  {outcome:<28}{lines:>13}{tracebacks:>12}")


if __name__ == "__main__":
    main()
