"""ADS fan-out at mesh scale: N Envoy-like streams, a full sync, then one shared cluster changes.

Reusable by bench/cp_scale.py: `MeshShape` builds the snapshots (shared clusters and endpoints are one Resource
each, listeners are per proxy), `FakeProxy`/`run_proxies` play Envoy, `serve_mesh` runs the server side.

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
from dataclasses import dataclass, field

import grpc
import psutil
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.server import AdsServer, serve
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Resource, Snapshot

TYPES = (CLUSTER, ENDPOINT, LISTENER)


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


@dataclass
class FakeProxy:
    """Envoy's side of SotW ADS: CDS+LDS wildcard, EDS for the clusters CDS named, ACK everything."""

    node: str
    services: int
    versions: dict[str, str] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    baseline: str | None = None
    reconnects: int = 0

    def request(self, type_url: str, version: str = "", nonce: str = "", names: list[str] | None = None,
                first: bool = False) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce,
                                             resource_names=names or [])
        if first:
            req.node.id = self.node
        return req

    async def run(self, channel: grpc.aio.Channel) -> None:
        """Reconnect on a failed stream as Envoy does: grpcio drops ~1% of streams when >1,000 connect at once."""
        while True:
            try:
                return await self._stream(channel)
            except grpc.aio.AioRpcError:
                self.reconnects += 1
                if self.reconnects > 20:
                    raise
                await asyncio.sleep(0.05 * self.reconnects)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=(("authorization", "bench"),), wait_for_ready=True)
        eds_names = [f"svc-{i}" for i in range(self.services)]
        await call.write(self.request(CLUSTER, first=True))
        await call.write(self.request(LISTENER))
        async for resp in call:
            t = resp.type_url
            names = eds_names if t == ENDPOINT else None
            await call.write(self.request(t, resp.version_info, resp.nonce, names))
            first_cds = t == CLUSTER and CLUSTER not in self.versions
            self.versions[t] = resp.version_info
            if first_cds:
                await call.write(self.request(ENDPOINT, names=eds_names))
            if not self.synced.is_set() and all(x in self.versions for x in TYPES):
                self.baseline = self.versions[CLUSTER]
                self.synced.set()
            elif self.baseline is not None and t == CLUSTER and resp.version_info != self.baseline:
                self.changed.set()


async def run_proxies(target: str, proxies: int, services: int, channels: int,
                      timeout: float = 120) -> tuple[list[FakeProxy], list[grpc.aio.Channel], list[asyncio.Task]]:
    # A local subchannel pool gives each channel its own TCP connection, as N real Envoys would have;
    # grpc's default global pool would quietly multiplex every "proxy" over one connection.
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=opts) for _ in range(channels)]
    fakes = [FakeProxy(node_id(i), services) for i in range(proxies)]
    tasks = [asyncio.create_task(f.run(chans[i % channels])) for i, f in enumerate(fakes)]
    return fakes, chans, tasks


async def wait_all(events: list[asyncio.Event], tasks: list[asyncio.Task], timeout: float) -> None:
    waiter = asyncio.gather(*(e.wait() for e in events))
    done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for t in done:
            if t.exception():
                raise t.exception()  # type: ignore[misc]
        raise TimeoutError(f"only {sum(e.is_set() for e in events)}/{len(events)} done after {timeout}s")


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
        fakes, chans, tasks = await run_proxies(f"127.0.0.1:{port}", args.proxies, args.services, args.channels)
        await wait_all([f.synced for f in fakes], tasks, 120)
        full = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # let the last ACKs land before changing anything
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
        for t in tasks:
            t.cancel()
        for c in chans:
            await c.close()
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
