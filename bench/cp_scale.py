"""Control-plane scale: N fake Envoys against one real `dpagent cp run` (store, auth, sync, generators, ADS).

Unlike bench/cp_scale_ads.py (the ADS layer with synthetic snapshots), every byte here comes from the real code
path: Dataplanes are applied through `Resources.apply` into the SQLite store, every stream presents its own
dataplane token (RS256, verified by the CP on connect and re-checked while it lives), and config is generated
from the store by XdsSync. The CP runs as a subprocess so its RSS and CPU are its own.

    .venv/bin/python bench/cp_scale.py [--sizes 100,1000] [--per-service 10] [--outbounds 5] [--protocol http]
                                       [--policy-mix] [--resilience-mix] [--reachable 5]

Targets (issues 12 and 15, 2 cores, the bench's fake proxies on the same machine): full sync <= 10 s up to 1,000
proxies and <= 25 s at 5,000 with 0 stream retries; a change that touches one service's proxies (or its callers)
ACKed in <= 0.5 s at every N with its CP CPU flat (within 30 %) from the smallest to the largest N; a change every
proxy takes <= 2 s at 1,000 and <= 5 s at 5,000; CP RSS <= 1 GiB; idle CP CPU with every stream connected <= 3 %.

Per size: a fresh data dir; mesh `default` (builtin mTLS + allow-all MeshTrafficPermission, as on first start);
N dataplanes, `--per-service` per service, one inbound each and `--outbounds` random other services. Measured:
  1. full sync: streams opened until every proxy ACKed CDS, EDS, LDS, RDS and the ADS-delivered `mesh_ca` SDS
     secret, the mesh's trust bundle;
  2. policy change: a Deny MeshTrafficPermission PUT through the REST API until every proxy whose config
     changed ACKed it; which proxies changed is read from the versions they receive;
  3. CP RSS after sync and CP CPU seconds; idle CPU with every stream connected.

--policy-mix runs every size twice, side by side: route-free, then with one MeshHTTPRoute per service (a 90/10
split of its version v1/v2 subsets, the mesh-wide allow-all MeshTrafficPermission of the first start still in
place), and in that run also times a route change (one service's weights 90/10 -> 50/50) until every proxy that
calls the service ACKed it.

--resilience-mix adds a run per size with every resilience / traffic-strategy kind the registry has (the rest are
printed as skipped; documents from Kuma's examples, see bench/_resilience_mix.py): mesh-wide MeshTimeout, MeshRetry
and MeshCircuitBreaker defaults plus one per-service override of each kind for 10 % of the services. It times a
MeshTimeout change (one override's requestTimeout; a MeshLoadBalancingStrategy change while MeshTimeout is absent)
until every proxy that calls the service ACKed it, and measures in-process the generation cost per proxy (generate
+ snapshot every proxy of the mesh) with all those kinds present beside the MeshTrafficPermission-only mesh.

--reachable K adds two runs per size with transparent-proxy Dataplanes (no `outbound` list): a full mesh (every
proxy gets every service's cluster, endpoints and capture chain), then each proxy with
`transparentProxying.reachableServices` naming K other services, side by side. Both also print the config each
proxy received (median over the proxies: bytes of the resources in the last response per type, and their count).
--store postgres --replicas R runs every size twice, side by side: the single SQLite CP, then R replicas on one
PostgreSQL (a throwaway server started by the bench, as the tests do; Debian's `postgresql` package) with the
proxies spread evenly over them. Changes are PUT through replica 1's API, so the proxies on the others get them
through the database's change feed. CPU is summed over the replicas; RSS is the largest replica's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from google.protobuf import struct_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _resilience_mix as mix
from _ads_clients import FakeProxy, close, open_channels, start, wait_all

from dpagent.controlplane import secrets
from dpagent.controlplane.app import first_start
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import SqliteStore
from dpagent.controlplane.store.pgconfig import PostgresConfig
from dpagent.controlplane.tokens import issue_token
from dpagent.controlplane.xds import names as xds_names

HERE = Path(__file__).resolve().parent
MESH = "default"
TARGET_RSS, TARGET_IDLE, TARGET_ONE, TARGET_FLAT = 1 << 30, 0.03, 0.5, 0.30


def target_sync(n: int) -> float:
    """10 s up to 1,000 proxies, 25 s at 5,000 (linear between): the issues' full-sync targets."""
    return 10.0 if n <= 1000 else 10.0 + 15.0 * (n - 1000) / 4000


def target_wide(n: int) -> float:
    """A change every proxy takes: 2 s up to 1,000 proxies, 5 s at 5,000."""
    return 2.0 if n <= 1000 else 2.0 + 3.0 * (n - 1000) / 4000


def service(i: int) -> str:
    return f"svc-{i:03d}"


def dataplane_docs(n: int, per_service: int, outbounds: int, protocol: str, seed: int, *, tproxy: bool = False,
                   reachable: int = 0) -> list[dict[str, Any]]:
    """N Dataplanes, `per_service` per service, each with one inbound and `outbounds` other services it calls.
    `tproxy`: transparent proxying instead of an outbound list, reaching every service, or (`reachable` > 0) the
    `reachable` other services named in `reachableServices`.

    Addresses are 10.x.y.z and only data: the CP never connects to them. Seeded, so runs compare.
    """
    rng = random.Random(seed)
    services = max(1, -(-n // per_service))
    docs = []
    for i in range(n):
        s = i // per_service
        others = [k for k in range(services) if k != s]
        calls = sorted(rng.sample(others, min(reachable if tproxy and reachable else outbounds, len(others))))
        ip = f"10.{(i + 1) >> 16 & 255}.{(i + 1) >> 8 & 255}.{(i + 1) & 255}"
        net: dict[str, Any] = {
            "address": ip,
            "inbound": [{"port": 10000 + i, "servicePort": 8080,
                         "tags": {"kuma.io/service": service(s), "kuma.io/protocol": protocol,
                                  "version": f"v{1 + i % 2}", "zone": "bench"}}],
        }
        if tproxy:
            net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
            if reachable:
                net["transparentProxying"]["reachableServices"] = [service(k) for k in calls]
        else:
            net["outbound"] = [{"port": 40000 + k, "tags": {"kuma.io/service": service(k)}} for k in calls]
        docs.append({"type": "Dataplane", "mesh": MESH, "name": f"dp-{i:04d}", "networking": net})
    return docs


def route_policy(target: str, v1: int, v2: int) -> dict[str, Any]:
    """One service's MeshHTTPRoute: every caller splits its requests v1:v2 over the service's version subsets."""
    def subset(version: str, weight: int) -> dict[str, Any]:
        return {"kind": "MeshServiceSubset", "name": target, "tags": {"version": version}, "weight": weight}

    return {"type": "MeshHTTPRoute", "mesh": MESH, "name": f"route-{target}", "spec": {"to": [
        {"targetRef": {"kind": "MeshService", "name": target}, "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "default": {"backendRefs": [subset("v1", v1), subset("v2", v2)]}}]}]}}


async def populate(data_dir: Path, docs: list[dict[str, Any]],
                   policies: Sequence[dict[str, Any]] = (), pg: PostgresConfig | None = None) -> list[str]:
    """Create the mesh as the CP's first start does, apply the Dataplanes, and issue one token per dataplane.

    Done before the CP starts (it holds an exclusive lock on the store while running); `NORMAL` sync only
    because this is set-up, the CP itself reopens the file with its own (FULL) durability.
    """
    if pg is not None:
        from dpagent.controlplane.store import pgschema
        from dpagent.controlplane.store.postgres import PostgresStore

        await pgschema.migrate_up(pg)
        store: Any = await PostgresStore.open(pg)
    else:
        store = await SqliteStore.open(str(data_dir / "store.db"), synchronous="NORMAL")
    try:
        resources = Resources(store)
        await first_start(resources, store)
        for doc in [*docs, *policies]:
            await resources.apply(doc)
        key = await secrets.ensure_signing_key(store, MESH)
    finally:
        await store.close()
    return [issue_token(key, name=d["name"], mesh=MESH, tags=None, valid_for=3600) for d in docs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_metadata(name: str, workdir: str) -> struct_pb2.Struct:
    """What the agent's bootstrap puts in node.metadata (no dataplane.resource: the Dataplanes are stored)."""
    meta = struct_pb2.Struct()
    meta.update({"dataplane.admin.socketPath": f"{workdir}/envoy-admin.sock", "dataplane.proxyType": "dataplane",
                 "dataplane.readinessReporter.port": "9902", "dataplane.dns.port": "15053",
                 "features": ["feature-bind-outbounds"], "version": {"dpagent": {"version": "bench"}},
                 "workdir": workdir})
    return meta


class ControlPlaneProcess:
    """`python -m dpagent cp run` on loopback ports in its own data dir; its log goes to cp.log there."""

    def __init__(self, data_dir: Path, log_level: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.ports = {"dp": free_port(), "xds": free_port(), "api": free_port()}
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "cp.log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dpagent", "cp", "run", "--data-dir", str(data_dir), "--bind-address",
             "127.0.0.1", "--dp-server-port", str(self.ports["dp"]), "--xds-port", str(self.ports["xds"]),
             "--api-port", str(self.ports["api"]), "--log-level", log_level],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.ps = psutil.Process(self.proc.pid)
        self.api = f"http://127.0.0.1:{self.ports['api']}"

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"CP exited with {self.proc.returncode}; see {self.data_dir / 'cp.log'}")
                try:
                    if (await client.get(self.api + "/", timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("CP not ready after 60 s")
                await asyncio.sleep(0.1)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Replicas:
    """Several `ControlPlaneProcess`es on one store, measured as one control plane."""

    def __init__(self, procs: list[ControlPlaneProcess]) -> None:
        self.procs = procs
        self.api = procs[0].api
        self.data_dir = procs[0].data_dir

    async def wait_ready(self) -> None:
        for p in self.procs:
            await p.wait_ready()

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def rss(self) -> int:
        return max(p.rss() for p in self.procs)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[0].proc

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@dataclass
class Change:
    seconds: float = float("nan")
    cpu: float = float("nan")
    window: float = 0.0  # seconds the CPU was counted over (the change, then the quiet wait)
    total_cpu: float = float("nan")  # over every repeat of this change (see median())
    total_window: float = 0.0
    affected: int = 0
    expected: int = 0
    types: set[str] = field(default_factory=set)

    target: float = TARGET_ONE

    def ok(self) -> bool:
        return self.seconds <= self.target and self.affected >= self.expected > 0


@dataclass
class Result:
    n: int
    services: int
    routes: bool = False
    resilience: bool = False
    tproxy: bool = False
    reachable: int = 0
    config_bytes: int = 0  # median over the proxies of the bytes they hold (last response of each type)
    config_counts: dict[str, int] = field(default_factory=dict)  # type -> median resources per proxy
    replicas: int = 0  # 0: the single SQLite CP; else that many replicas on PostgreSQL
    populate_s: float = 0.0
    sync_s: float = float("nan")
    sync_cpu: float = float("nan")
    idle_cpu: float = float("nan")
    one: Change = field(default_factory=Change)
    all: Change | None = None
    route: Change | None = None
    mix_change: Change | None = None
    mix_kind: str = ""
    rss: int = 0
    rss_idle: int = 0
    retries: int = 0
    retry_reasons: str = ""
    client_cpu: float = 0.0
    error: str = ""


REPEAT = 5  # times each one-service change is measured


def median(changes: list[Change]) -> Change:
    """The run with the median CP CPU (its ACK time and proxy counts with it); `cpu` and `window` become the
    totals over every run, for the flatness check: one change is a few 10 ms ticks of the process clock."""
    mid = sorted(changes, key=lambda c: c.cpu)[len(changes) // 2]
    return Change(seconds=mid.seconds, cpu=mid.cpu, window=mid.window, affected=mid.affected, expected=mid.expected,
                  types=mid.types, target=mid.target, total_cpu=sum(c.cpu for c in changes),
                  total_window=sum(c.window for c in changes))


def deny_policy(name: str, source: str, target: str | None) -> dict[str, Any]:
    """Deny `source` on `target`'s inbounds (every inbound of the mesh when target is None)."""
    ref = {"kind": "MeshService", "name": target} if target else {"kind": "Mesh"}
    return {"type": "MeshTrafficPermission", "mesh": MESH, "name": name,
            "spec": {"targetRef": ref, "from": [{"targetRef": {"kind": "MeshService", "name": source},
                                                 "default": {"action": "Deny"}}]}}


async def measure_change(cp: ControlPlaneProcess | Replicas, fakes: list[FakeProxy], expected: list[FakeProxy],
                         tasks: list[asyncio.Task[None]], policy: dict[str, Any], args: argparse.Namespace) -> Change:
    """PUT the policy and time it until every proxy whose config changed has ACKed the change.

    Which proxies changed is what they receive (a version differing from the one they held), not what the
    bench predicts; `expected` is only the set that must change for the run to count.
    """
    for f in fakes:
        f.mark_baseline()
    out = Change(expected=len(expected))
    c1 = cp.cpu()
    async with httpx.AsyncClient() as client:
        t1 = time.perf_counter()
        plural = POLICY_KINDS[policy["type"]].plural
        r = await client.put(f"{cp.api}/meshes/{MESH}/{plural}/{policy['name']}", json=policy, timeout=30)
        r.raise_for_status()
    await wait_change(fakes, expected, tasks, args.quiet, args.timeout)
    changed = [f for f in fakes if f.last_change_ack is not None]
    out.seconds = max(f.last_change_ack or t1 for f in changed) - t1
    out.cpu = cp.cpu() - c1
    out.window = time.perf_counter() - t1
    out.affected = len(changed)
    out.types = set().union(*(f.changed_types for f in changed))
    return out


async def wait_change(fakes: list[FakeProxy], expected: list[FakeProxy], tasks: list[asyncio.Task[None]],
                      quiet: float, timeout: float) -> None:
    """Until every expected proxy changed and no other proxy has changed for `quiet` seconds."""
    await wait_all([f.changed for f in expected], tasks, timeout)
    while True:
        latest = max((f.last_change_ack or 0.0) for f in fakes)
        wait = latest + quiet - time.perf_counter()
        if wait <= 0:
            return
        await asyncio.sleep(wait)


def callers_of(docs: list[dict[str, Any]], fakes: list[FakeProxy], target: str) -> list[FakeProxy]:
    def calls(net: dict[str, Any]) -> bool:
        tp = net.get("transparentProxying")
        if tp is not None:  # a tproxy proxy reaches its reachableServices, else every service
            return target in tp.get("reachableServices", [target])
        return any(o["tags"]["kuma.io/service"] == target for o in net["outbound"])

    names = {d["name"] for d in docs if calls(d["networking"])}
    return [f for f in fakes if f.node.split(".", 1)[1] in names]


async def run_size(args: argparse.Namespace, n: int, routes: bool = False, resilience: bool = False,
                   tproxy: bool = False, reachable: int = 0, replicas: int = 0) -> Result:
    docs = dataplane_docs(n, args.per_service, args.outbounds, args.protocol, args.seed, tproxy=tproxy,
                          reachable=reachable)
    res = Result(n, len({d["networking"]["inbound"][0]["tags"]["kuma.io/service"] for d in docs}), routes, resilience,
                 tproxy, reachable, replicas=replicas)
    policies = [route_policy(service(k), 90, 10) for k in range(res.services)] if routes else []
    kinds = mix.present()[0] if resilience else []
    policies += mix.policy_docs(res.services, service, kinds)
    data_dir = Path(tempfile.mkdtemp(prefix=f"cp-scale-{n}-"))
    cp: ControlPlaneProcess | Replicas | None = None
    tasks: list[asyncio.Task[None]] = []
    chans: list[Any] = []
    me = psutil.Process()
    database = ""
    try:
        t = time.perf_counter()
        pg_cfg = None
        if replicas:
            import pgserver

            database = await args.pg.create_database()
            pg_cfg = pgserver.store_config(args.pg, database, max_open_connections=20)
        tokens = await populate(data_dir, docs, policies, pg_cfg)
        res.populate_s = time.perf_counter() - t
        if replicas:
            env = pgserver.store_env(args.pg, database)
            cp = Replicas([ControlPlaneProcess(data_dir / f"replica-{i + 1}", args.cp_log_level, env)
                           for i in range(replicas)])
        else:
            cp = ControlPlaneProcess(data_dir, args.cp_log_level)
        await cp.wait_ready()
        await asyncio.sleep(0.5)
        ca_pem = (cp.data_dir / "ca.pem").read_bytes()
        res.rss_idle = cp.rss()
        fakes = [FakeProxy(f"{MESH}.{d['name']}", metadata=(("authorization", tok),),
                           node_metadata=node_metadata(d["name"], f"/var/run/dpagent/{d['name']}"),
                           cluster=d["networking"]["inbound"][0]["tags"]["kuma.io/service"],
                           secrets=(xds_names.MESH_CA,))
                 for d, tok in zip(docs, tokens, strict=True)]

        # 1. full sync
        c0, m0 = cp.cpu(), me.cpu_times()
        t0 = time.perf_counter()
        procs = cp.procs if isinstance(cp, Replicas) else [cp]
        for i, proc in enumerate(procs):  # proxy k connects to replica k mod R
            mine = fakes[i::len(procs)]
            some = open_channels(f"127.0.0.1:{proc.ports['xds']}", max(1, (args.channels or n) // len(procs)),
                                 ca_pem=ca_pem, server_name="localhost")
            chans += some
            tasks += start(mine, some)
        await wait_all([f.synced for f in fakes], tasks, args.timeout)
        res.sync_s = time.perf_counter() - t0
        res.sync_cpu = cp.cpu() - c0
        res.config_bytes = int(statistics.median(sum(f.sizes.values()) for f in fakes))
        res.config_counts = {t: int(statistics.median(f.counts.get(t, 0) for f in fakes))
                             for t in sorted({t for f in fakes for t in f.counts})}
        await asyncio.sleep(args.settle)
        res.rss = cp.rss()

        c_idle = cp.cpu()
        await asyncio.sleep(args.idle)  # streams connected, nothing changing: token re-checks, keepalives
        res.idle_cpu = (cp.cpu() - c_idle) / args.idle

        # 2. policy change through the REST API: one service denies another
        # (median of REPEAT: a change this small is a few CPU ticks, so one sample is mostly the clock's grain)
        ones = []
        for k in range(REPEAT):
            # distinct (source, target) pairs: a repeat of an earlier deny would change nothing (N=50 has 5 services)
            others = max(1, res.services - 1)
            src = k // others % res.services
            source, target = service(src), service((src + 1 + k % others) % res.services)
            expected = [f for f in fakes if f.cluster == target]
            ones.append(await measure_change(cp, fakes, expected, tasks,
                                             deny_policy(f"bench-deny-{k}", source, target), args))
        res.one = median(ones)
        # 2b. a mesh-wide one: every inbound now denies a third service, so every proxy's inbound RDS route changes
        if args.mesh_wide:
            third = service(min(2, res.services - 1))
            res.all = await measure_change(cp, fakes, fakes, tasks, deny_policy("bench-deny-all", third, None), args)
            res.all.target = target_wide(n)
        # 2c. a route change: one service's split 90/10 -> 50/50; every proxy calling it gets a new RDS route
        if routes:
            target_ = service(1)
            res.route = await measure_change(cp, fakes, callers_of(docs, fakes, target_), tasks,
                                             route_policy(target_, 50, 50), args)
        # 2d. a resilience change: one per-service override (MeshTimeout's requestTimeout) for svc-001's callers
        kind = mix.change_kind(kinds)
        if kind is not None:
            target_ = service(mix.CHANGED_SERVICE_INDEX)
            res.mix_kind = kind
            res.mix_change = median([await measure_change(cp, fakes, callers_of(docs, fakes, target_), tasks,
                                                          mix.override(kind, target_, variant=(k + 1) % 2), args)
                                     for k in range(REPEAT)])
        res.retries = sum(f.reconnects for f in fakes)
        reasons = collections.Counter(f.error[:80] for f in fakes if f.reconnects)
        res.retry_reasons = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
        m1 = me.cpu_times()
        res.client_cpu = (m1.user + m1.system) - (m0.user + m0.system)
    except Exception as exc:  # report what was measured and why the rest is missing
        res.error = f"{type(exc).__name__}: {exc}"
        if cp is not None and not res.rss and cp.proc.poll() is None:
            res.rss = cp.rss()
    finally:
        await close(tasks, chans)
        if cp is not None:
            cp.stop()
        if database:
            await args.pg.drop_database(database)
        if args.keep:
            print(f"kept {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return res


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


SHORT = {"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "SDS",
         "type.googleapis.com/envoy.config.cluster.v3.Cluster": "CDS",
         "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
         "type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
         "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS"}


def _change_rows(label: str, changes: list[Change | None]) -> list[tuple[str, list[str], str]]:
    def fmt(c: Change | None, what: str) -> str:
        if c is None:
            return "-"
        if what == "s":
            return f"{c.seconds:.2f} s"
        if what == "cpu":
            return f"{c.cpu:.2f} s"
        return f"{c.affected} ({c.expected}) {'+'.join(SHORT.get(t, t) for t in sorted(c.types)) or '-'}"

    targets = sorted({f"{c.target:g}" for c in changes if c is not None})
    return [(f"{label}, changed proxies ACKed", [fmt(c, "s") for c in changes], f"<= {'/'.join(targets)} s"),
            ("  proxies changed (expected) types", [fmt(c, "n") for c in changes], ""),
            ("  CP CPU for the change", [fmt(c, "cpu") for c in changes], "")]


def table(results: list[Result]) -> str:
    rows: list[tuple[str, list[str], str]] = [
        ("dataplanes / services", [f"{r.n} / {r.services}" for r in results], ""),
        ("full sync, all ACKed CDS+EDS+LDS+RDS+SDS", [f"{r.sync_s:.2f} s" for r in results],
         "<= " + "/".join(sorted({f"{target_sync(r.n):g}" for r in results}, key=float)) + " s"),
        ("  CP CPU during sync", [f"{r.sync_cpu:.2f} s" for r in results], ""),
        ("config per proxy (median)", [f"{r.config_bytes / 1024:.1f} KiB" for r in results], ""),
        ("  resources per proxy (median)", [" ".join(f"{SHORT.get(t, t)}={c}" for t, c in r.config_counts.items())
                                            for r in results], ""),
        *_change_rows(f"1 service denies 1 (median of {REPEAT})", [r.one for r in results]),
    ]
    if any(r.all is not None for r in results):
        rows += _change_rows("mesh-wide deny", [r.all for r in results])
    if any(r.route is not None for r in results):
        rows += _change_rows("route change (1 service)", [r.route for r in results])
    if any(r.mix_change is not None for r in results):
        kind = next(r.mix_kind for r in results if r.mix_change is not None)
        rows += _change_rows(f"{kind} change (1 service, median of {REPEAT})", [r.mix_change for r in results])
    rows += [
        ("CP RSS after sync", [f"{r.rss / 2**20:.0f} MiB" for r in results], "<= 1024 MiB"),
        ("  CP RSS before streams", [f"{r.rss_idle / 2**20:.0f} MiB" for r in results], ""),
        ("CP CPU idle, streams connected", [f"{100 * r.idle_cpu:.1f} %" for r in results],
         f"<= {100 * TARGET_IDLE:.0f} %"),
        ("bench client CPU (sync+changes)", [f"{r.client_cpu:.2f} s" for r in results], ""),
        ("stream retries", [str(r.retries) for r in results], "0"),
        ("populate store + tokens", [f"{r.populate_s:.2f} s" for r in results], ""),
    ]
    heads = [label(r) for r in results]
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(heads)]

    def line(a: str, cells: list[str], c: str) -> str:
        return "  ".join([a.ljust(w0), *(x.rjust(w) for x, w in zip(cells, ws, strict=True)), c]).rstrip()

    out = [line("", heads, "target"), line("-" * w0, ["-" * w for w in ws], "------")]
    out += [line(a, cells, c) for a, cells, c in rows]
    return "\n".join(out)


def label(r: Result) -> str:
    tp = (f" tproxy reach={r.reachable}" if r.reachable else " tproxy full") if r.tproxy else ""
    return (f"N={r.n}" + (f" pg x{r.replicas}" if r.replicas else "") + tp + (" +routes" if r.routes else "")
            + (" +resilience" if r.resilience else ""))


def flatness(results: list[Result]) -> list[str]:
    """A 1-service change must cost the same CP CPU at every N (within 30 %): it touches the same proxies."""
    out = []
    for kind in sorted({(r.routes, r.resilience, r.tproxy, r.reachable, r.replicas) for r in results}):
        runs = sorted((r for r in results if (r.routes, r.resilience, r.tproxy, r.reachable, r.replicas) == kind
                       and r.one.cpu == r.one.cpu),
                      key=lambda r: r.n)
        if len(runs) < 2:
            continue
        lo, hi = runs[0], runs[-1]
        changes = [("1 service denies 1", lo.one, hi.one)]
        if lo.mix_change is not None and hi.mix_change is not None:
            changes.append((f"{lo.mix_kind} change", lo.mix_change, hi.mix_change))
        for what, a, b in changes:
            # Net of the CP's idle work over the same window (keepalives, token re-checks: they grow with the
            # number of streams whatever changes), measured just before on the same CP.
            na, nb = a.total_cpu - lo.idle_cpu * a.total_window, b.total_cpu - hi.idle_cpu * b.total_window
            ratio = nb / na if na > 0 else float("inf")
            out.append(f"{label(hi)} vs N={lo.n}: {what}, CP CPU of {REPEAT} changes net of idle {na:.3f} s -> "
                       f"{nb:.3f} s (raw {a.total_cpu:.2f} -> {b.total_cpu:.2f} s over {a.total_window:.1f}/"
                       f"{b.total_window:.1f} s; x{ratio:.2f}, flat within {TARGET_FLAT:.0%}: "
                       f"{verdict(ratio <= 1 + TARGET_FLAT)})")
    return out


def verdicts(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        parts = [f"full sync {verdict(r.sync_s <= target_sync(r.n) and r.retries == 0)}",
                 f"policy change {verdict(r.one.ok())}"]
        if r.all is not None:
            parts.append(f"mesh-wide change {verdict(r.all.ok())}")
        if r.route is not None:
            parts.append(f"route change {verdict(r.route.ok())}")
        if r.mix_change is not None:
            parts.append(f"{r.mix_kind} change {verdict(r.mix_change.ok())}")
        parts.append(f"RSS {verdict(0 < r.rss <= TARGET_RSS)}")
        parts.append(f"idle CPU {verdict(r.idle_cpu <= TARGET_IDLE)}")
        out.append(f"{label(r)}: " + ", ".join(parts) + (f"  ERROR {r.error}" if r.error else "")
                   + (f"  retried: {r.retry_reasons}" if r.retry_reasons else ""))
    return out


async def main_async(args: argparse.Namespace) -> int:
    results = []
    args.pg = None
    if args.store == "postgres":
        import pgserver

        args.pg = pgserver.PgServer.start()
    try:
        return await _run_all(args, results)
    finally:
        if args.pg is not None:
            args.pg.stop()


async def _run_all(args: argparse.Namespace, results: list[Result]) -> int:
    for n in args.sizes:
        if not args.mix_only:
            print(f"running N={n} ...", file=sys.stderr, flush=True)
            results.append(await run_size(args, n))
        if args.pg is not None:
            print(f"running N={n} on PostgreSQL with {args.replicas} replicas ...", file=sys.stderr, flush=True)
            results.append(await run_size(args, n, replicas=args.replicas))
        if args.policy_mix:
            print(f"running N={n} with a MeshHTTPRoute per service ...", file=sys.stderr, flush=True)
            results.append(await run_size(args, n, routes=True))
        if args.resilience_mix:
            print(f"running N={n} with the resilience mix ...", file=sys.stderr, flush=True)
            results.append(await run_size(args, n, resilience=True))
        if args.reachable:
            print(f"running N={n} with transparent proxying, full mesh ...", file=sys.stderr, flush=True)
            results.append(await run_size(args, n, tproxy=True))
            print(f"running N={n} with transparent proxying, reachableServices of {args.reachable} ...",
                  file=sys.stderr, flush=True)
            results.append(await run_size(args, n, tproxy=True, reachable=args.reachable))
    print(f"cpus={os.cpu_count()} shape: {args.per_service} dataplanes/service, {args.outbounds} outbounds each, "
          f"protocol={args.protocol}, TLS ADS, one token per proxy, channels={args.channels or 'one per proxy'}")
    if args.resilience_mix:
        kinds, skipped = mix.present()
        print(f"resilience mix: kinds present {', '.join(kinds) or 'none'}; skipped (not registered): "
              f"{', '.join(skipped) or 'none'}")
    print(table(results))
    if args.resilience_mix:
        print(generation_table(args))
    lines = verdicts(results) + flatness(results)
    print("\n".join(lines))
    return 0 if all("FAIL" not in x and "ERROR" not in x for x in lines) else 1


def generation_table(args: argparse.Namespace) -> str:
    """In process, no network: µs per proxy to generate and snapshot a whole mesh, MTP-only beside all kinds."""
    kinds = mix.present()[0]
    out = ["generation per proxy, in process (generate + snapshot every proxy; best of 3; mesh state build in ())"]
    for n in args.sizes:
        docs = dataplane_docs(n, args.per_service, args.outbounds, args.protocol, args.seed)
        services = -(-n // args.per_service)
        base, base_build = mix.generation_us(docs, [])
        full, full_build = mix.generation_us(docs, mix.policy_docs(services, service, kinds))
        out.append(f"  N={n}: MeshTrafficPermission only {base:.0f} µs ({base_build:.0f} ms)   "
                   f"+ {len(kinds)} resilience kind(s) {full:.0f} µs ({full_build:.0f} ms)   "
                   f"x{full / base:.2f}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000", type=lambda s: [int(x) for x in s.split(",") if x],
                   help="dataplane counts, one CP run each")
    p.add_argument("--per-service", type=int, default=10, help="dataplanes per service (1000 -> 100 services)")
    p.add_argument("--outbounds", type=int, default=5, help="other services each dataplane calls")
    p.add_argument("--protocol", default="http", choices=["http", "tcp", "http2", "grpc"])
    p.add_argument("--channels", type=int, default=0, help="client connections (default: one per proxy)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0, help="seconds between sync and the change")
    p.add_argument("--quiet", type=float, default=1.0,
                   help="after the expected proxies changed, wait this long without further changes")
    p.add_argument("--idle", type=float, default=5.0,
                   help="seconds of idle CPU measured after sync (token re-checks run every 5 s per stream)")
    p.add_argument("--no-mesh-wide", dest="mesh_wide", action="store_false",
                   help="skip the second change (a Mesh-wide deny that changes every proxy)")
    p.add_argument("--policy-mix", action="store_true",
                   help="also run each size with one MeshHTTPRoute per service, and time a route change")
    p.add_argument("--resilience-mix", action="store_true",
                   help="also run each size with every resilience kind present (mesh-wide defaults + 10 %% "
                        "per-service overrides), time a MeshTimeout change, print generation µs per proxy")
    p.add_argument("--reachable", type=int, default=0, metavar="K",
                   help="also run each size with transparent-proxy Dataplanes: a full mesh, then each with "
                        "reachableServices of K other services; prints the config per proxy of both")
    p.add_argument("--mix-only", action="store_true",
                   help="with --policy-mix/--resilience-mix/--reachable: skip the policy-free run of each size")
    p.add_argument("--timeout", type=float, default=90.0, help="give up on a phase after this many seconds")
    p.add_argument("--cp-log-level", default="info", choices=["error", "warning", "info", "debug"])
    p.add_argument("--keep", action="store_true", help="keep the data dirs (store, cp.log)")
    p.add_argument("--store", default="sqlite", choices=["sqlite", "postgres"],
                   help="postgres: also run each size on REPLICAS CP replicas sharing a throwaway PostgreSQL")
    p.add_argument("--replicas", type=int, default=2, help="with --store postgres: CP replicas (proxies spread)")
    args = p.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
