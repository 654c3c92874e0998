"""How soon a policy change reaches the proxies after a control-plane outage: the proxies' reconnect delay.

Stops the CP for each outage length, starts it again, applies a Deny the moment its API answers, and times how long
until a request through the mesh gets the 403. What that measures is mostly Envoy's ADS reconnect back-off (the
CP itself regenerates config in milliseconds). Target: ≤ 5 s for any outage up to 5 minutes.
Usage: python bench/cp_outage_reconnect.py [--outages 10,60,300] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _mesh import AgentProc, ControlPlane, Procs, interrupt_safe
from testlib import HttpApp, free_port, wait_for

DENY = {"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-web", "spec": {
    "targetRef": {"kind": "MeshService", "name": "backend"},
    "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}}
MTP = "/meshes/default/meshtrafficpermissions/deny-web"


def dataplane(name: str, service: str, port: int, service_port: int, outbound: str = "") -> str:
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {port}\n    servicePort: {service_port}\n    tags:\n      kuma.io/service: {service}\n"
            f"      kuma.io/protocol: http\n{outbound}")


def status(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/x", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def connected(cp: ControlPlane, name: str) -> bool:
    r = httpx.get(f"{cp.api}/meshes/default/dataplanes/{name}/_inspect", timeout=2)
    return bool(r.status_code == 200 and r.json()["xds"].get("connected"))


def one(cp: ControlPlane, out_port: int, outage: float) -> float:
    cp.procs.stop(cp.proc)
    cp.procs.forget(cp.proc)
    time.sleep(outage)
    cp.start()  # returns once the API answers
    t0 = time.monotonic()
    httpx.put(cp.api + MTP, json=DENY, timeout=5).raise_for_status()
    wait_for(lambda: connected(cp, "backend-1"), 300, interval=0.02, what="backend-1 reconnected")
    back = time.monotonic() - t0
    wait_for(lambda: status(out_port) == 403, 120, interval=0.02, what="403 after the Deny")
    took = time.monotonic() - t0
    print(f"  outage {outage:g}s: backend-1 reconnected after {back:.2f}s, 403 after {took:.2f}s", flush=True)
    httpx.delete(cp.api + MTP, timeout=5).raise_for_status()
    wait_for(lambda: status(out_port) == 200, 30, interval=0.05, what="200 after the Deny is gone")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outages", default="10", help="outage lengths in seconds, comma-separated")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    app = HttpApp("backend")
    with tempfile.TemporaryDirectory() as tmp, interrupt_safe(Procs()) as procs:
        cp = ControlPlane(procs, Path(tmp))
        cp.start()
        out_port = free_port()
        AgentProc(cp, "backend-1", dataplane("backend-1", "backend", free_port(), app.port)).wait_ready()
        web = AgentProc(cp, "web-1", dataplane("web-1", "web", free_port(), 1, (
            f"  outbound:\n  - port: {out_port}\n    tags:\n      kuma.io/service: backend\n")))
        web.wait_ready()
        wait_for(lambda: status(out_port) == 200, 30, what="web -> backend")
        for outage in (float(x) for x in args.outages.split(",")):
            took = [one(cp, out_port, outage) for _ in range(args.runs)]
            print(f"outage {outage:g}s: Deny in force {statistics.median(took):.2f}s (median), "
                  f"{max(took):.2f}s (worst) after the CP answered; runs: {', '.join(f'{t:.2f}' for t in took)}",
                  flush=True)


if __name__ == "__main__":
    main()
