"""ADS fan-out at mesh scale: N Envoy-like streams, a full sync, then one shared cluster changes.

`MeshShape` builds the snapshots (shared clusters and endpoints are one Resource each, listeners are per proxy),
`serve_mesh` runs the server side; the fake Envoys live in bench/_ads_clients.py, shared with bench/cp_scale.py
(which drives the whole control plane rather than synthetic snapshots).

    .venv/bin/python bench/cp_scale_ads.py --proxies 1000 [--services 100] [--in-process] [--channels 1000]

Targets (2 cores): full sync <= 10 s, one change ACKed by all <= 2 s, server RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core logs every GOAWAY at teardown otherwise
import subprocess
import sys
import time

import grpc
import psutil
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, duration_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _ads_clients import FakeProxy, close, open_channels, start, wait_all

from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.server import AdsServer, serve
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Resource, Snapshot


def _addr(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


class MeshShape:
    """A mesh of `services` services: every proxy shares all clusters and endpoints, owns two listeners."""

    def __init__(self, services: int = 100, endpoints: int = 3) -> None:
        self.services = services
        self.endpoints = endpoints
        self.generation = 0
        self.clusters = {f"svc-{i}": Resource(f"svc-{i}", self._cluster(i)) for i in range(services)}
        self.clas = {f"svc-{i}": Resource(f"svc-{i}", self._cla(i)) for i in range(services)}

    def _cluster(self, i: int, timeout_ms: int = 5000) -> cluster_pb2.Cluster:
        ads = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                             resource_api_version=config_source_pb2.V3)
        return cluster_pb2.Cluster(
            name=f"svc-{i}", type=cluster_pb2.Cluster.EDS,
            connect_timeout=duration_pb2.Duration(nanos=0, seconds=timeout_ms // 1000),
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads, service_name=f"svc-{i}"))

    def _cla(self, i: int) -> endpoint_pb2.ClusterLoadAssignment:
        eps = [epc.LbEndpoint(endpoint=epc.Endpoint(address=_addr(f"10.{i // 250}.{i % 250}.{k + 1}", 8080)))
               for k in range(self.endpoints)]
        return endpoint_pb2.ClusterLoadAssignment(cluster_name=f"svc-{i}",
                                                  endpoints=[epc.LocalityLbEndpoints(lb_endpoints=eps)])

    def listeners(self, proxy: int) -> dict[str, Resource]:
        out = {}
        for name, port, cluster in ((f"inbound:{proxy}", 8080, "localhost"), ("outbound", 15001, "svc-0")):
            tcp = any_pb2.Any()
            tcp.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster))
            lst = listener_pb2.Listener(name=name, address=_addr(f"10.200.{proxy // 250}.{proxy % 250}", port),
                                        filter_chains=[lc.FilterChain(filters=[lc.Filter(
                                            name="envoy.filters.network.tcp_proxy", typed_config=tcp)])])
            out[name] = Resource(name, lst)
        return out

    def snapshot(self, proxy: int) -> Snapshot:
        return Snapshot({CLUSTER: self.clusters, ENDPOINT: self.clas, LISTENER: self.listeners(proxy)})

    def change_one_cluster(self) -> None:
        """One shared cluster changes: one new Resource, one serialisation, whatever the proxy count."""
        self.generation += 1
        self.clusters = dict(self.clusters)
        self.clusters["svc-0"] = Resource("svc-0", self._cluster(0, 5000 + 1000 * self.generation))


def node_id(i: int) -> str:
    return f"default.proxy-{i}"


def acked_count(cache: SnapshotCache, proxies: int) -> int:
    """Proxies whose ACKed CDS and EDS versions equal their snapshot's, as the server itself recorded them."""
    n = 0
    for i in range(proxies):
        st = cache.status(node_id(i))
        if st and all(st["types"].get(t, {}).get("acked_version") == st["types"].get(t, {}).get("snapshot_version")
                      for t in (CLUSTER, ENDPOINT)):
            n += 1
    return n


async def serve_mesh(proxies: int, services: int, port: int = 0) -> tuple[grpc.aio.Server, AdsServer, MeshShape]:
    cache = SnapshotCache()
    shape = MeshShape(services)
    for i in range(proxies):
        cache.set_snapshot(node_id(i), shape.snapshot(i))

    async def authenticate(metadata: dict[str, str], node: base_pb2.Node) -> str:
        return node.id

    ads = AdsServer(cache, authenticate)
    server = await serve(ads, "127.0.0.1", port)
    return server, ads, shape


async def push_change(ads: AdsServer, shape: MeshShape, proxies: int) -> float:
    """Rebuild every proxy's snapshot after one shared change (as a generator would) and hand it to the cache."""
    t0 = time.perf_counter()
    shape.change_one_cluster()
    for i in range(proxies):
        old = ads.cache.get_snapshot(node_id(i))
        assert old is not None
        ads.cache.set_snapshot(node_id(i), Snapshot({CLUSTER: shape.clusters, ENDPOINT: shape.clas,
                                                     LISTENER: old.resources(LISTENER)}))
    return time.perf_counter() - t0


async def run_proxies(target: str, proxies: int, channels: int
                      ) -> tuple[list[FakeProxy], list[grpc.aio.Channel], list[asyncio.Task[None]]]:
    chans = open_channels(target, channels)
    fakes = [FakeProxy(node_id(i)) for i in range(proxies)]
    return fakes, chans, start(fakes, chans)


async def server_main(args: argparse.Namespace) -> None:
    """Subprocess mode: serve, print the port, then obey 'change' / 'rss' / 'quit' lines on stdin."""
    server, ads, shape = await serve_mesh(args.proxies, args.services)
    print(f"PORT {ads.bound_port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "change":
            print(f"CHANGED {await push_change(ads, shape, args.proxies):.3f}", flush=True)
        elif line == "acked":
            print(f"ACKED {acked_count(ads.cache, args.proxies)}", flush=True)
        elif line == "rss":
            print(f"RSS {psutil.Process().memory_info().rss}", flush=True)
        else:
            break
    await server.stop(0)


async def ask_acked(proc: subprocess.Popen[str] | None, ads: AdsServer | None, proxies: int) -> int:
    if ads is not None:
        return acked_count(ads.cache, proxies)
    assert proc and proc.stdin and proc.stdout
    proc.stdin.write("acked\n")
    proc.stdin.flush()
    return int((await asyncio.to_thread(proc.stdout.readline)).split()[1])


async def driver_main(args: argparse.Namespace) -> None:
    proc: subprocess.Popen[str] | None = None
    if args.in_process:
        t_build = time.perf_counter()
        server, ads, shape = await serve_mesh(args.proxies, args.services)
        print(f"built {args.proxies} snapshots in {time.perf_counter() - t_build:.2f}s")
        port = ads.bound_port
    else:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "--proxies", str(args.proxies),
                                 "--services", str(args.services)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout and proc.stdin
        port = int(proc.stdout.readline().split()[1])
    rss0 = psutil.Process(proc.pid if proc else os.getpid()).memory_info().rss
    try:
        t0 = time.perf_counter()
        fakes, chans, tasks = await run_proxies(f"127.0.0.1:{port}", args.proxies, args.channels)
        await wait_all([f.synced for f in fakes], tasks, 120)
        full = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # let the last ACKs land before changing anything
        for f in fakes:
            f.mark_baseline()
        t1 = time.perf_counter()
        if proc:
            assert proc.stdin and proc.stdout
            proc.stdin.write("change\n")
            proc.stdin.flush()
            rebuild = float((await asyncio.to_thread(proc.stdout.readline)).split()[1])
        else:
            rebuild = await push_change(ads, shape, args.proxies)
        await wait_all([f.changed for f in fakes], tasks, 60)
        change = time.perf_counter() - t1
        while (acked := await ask_acked(proc, ads if proc is None else None, args.proxies)) < args.proxies:
            if time.perf_counter() - t1 > 60:
                raise TimeoutError(f"server saw only {acked}/{args.proxies} ACKs of the change")
            await asyncio.sleep(0.01)
        change_acked = time.perf_counter() - t1
        rss = psutil.Process(proc.pid if proc else os.getpid()).memory_info().rss
        mode = "in-process" if proc is None else "subprocess"
        print(f"proxies={args.proxies} services={args.services} channels={args.channels} server={mode} "
              f"cpus={os.cpu_count()} stream-retries={sum(f.reconnects for f in fakes)}")
        print(f"full sync ACKed by all:      {full:6.2f} s  (target <= 10 s)")
        print(f"one cluster change, all got: {change:6.2f} s  (snapshot rebuild {rebuild:.2f} s)")
        print(f"  ... ACKs recorded by server: {change_acked:6.2f} s  (target <= 2 s)")
        print(f"server RSS:                  {rss / 2**20:6.0f} MiB (target <= 1024; before streams "
              f"{rss0 / 2**20:.0f} MiB)")
        await close(tasks, chans)
    finally:
        if proc:
            if proc.stdin:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            await server.stop(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxies", type=int, default=1000)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--channels", type=int, default=0, help="client connections (default: one per proxy)")
    p.add_argument("--in-process", action="store_true", help="run the server in the client process")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.channels = args.channels or args.proxies
    asyncio.run(server_main(args) if args.serve else driver_main(args))


if __name__ == "__main__":
    main()
