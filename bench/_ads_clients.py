"""Fake Envoys for the control-plane benchmarks: SotW ADS clients that behave like Envoy and ACK everything.

Shared by bench/cp_scale_ads.py (ADS layer alone) and bench/cp_scale.py (the whole CP), so both benchmarks put
the same client load on the server. Like Envoy, a `FakeProxy` subscribes to CDS and LDS as wildcards, derives its
EDS subscription from the EDS clusters a CDS response names, subscribes to the ADS-delivered SDS secrets its config
refers to (named by the caller: finding them would mean walking every transport socket), ACKs every response with
its version and nonce, and reconnects with backoff when a stream fails.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core logs every GOAWAY at teardown otherwise
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
HCM_TYPE = _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def eds_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The EDS resource names a CDS response asks for, as Envoy computes them (service_name, else cluster name)."""
    out = set()
    for res in resp.resources:
        c = cluster_pb2.Cluster.FromString(res.value)
        if c.type == cluster_pb2.Cluster.EDS:
            out.add(c.eds_cluster_config.service_name or c.name)
    return sorted(out)


def rds_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The RDS route configurations an LDS response's HTTP connection managers refer to, as Envoy asks for them."""
    out = set()
    for res in resp.resources:
        listener = listener_pb2.Listener.FromString(res.value)
        chains = [*listener.filter_chains, *([listener.default_filter_chain]
                                             if listener.HasField("default_filter_chain") else [])]
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM_TYPE:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        out.add(hcm.rds.route_config_name)
    return sorted(out)


@dataclass
class FakeProxy:
    """Envoy's side of SotW ADS for one node, with the timing the benchmarks read.

    `synced` is set once CDS, LDS, the `secrets` (if any), (when CDS named EDS clusters) EDS and (when LDS named
    RDS routes) RDS have each been ACKed. After
    `mark_baseline()`, `changed` is set on the first ACK of a version that differs from the baseline, and
    `last_change_ack` holds the perf_counter time of the latest such ACK (a change may arrive as several pushes).
    """

    node: str
    metadata: Sequence[tuple[str, str]] = (("authorization", "bench"),)
    node_metadata: struct_pb2.Struct | None = None
    cluster: str = ""
    secrets: Sequence[str] = ()
    versions: dict[str, str] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    baseline: dict[str, str] | None = None
    last_change_ack: float | None = None
    changed_types: set[str] = field(default_factory=set)
    reconnects: int = 0
    responses: int = 0
    error: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # type -> bytes of the resources in the last response
    counts: dict[str, int] = field(default_factory=dict)  # type -> resources in the last response

    def request(self, type_url: str, version: str = "", nonce: str = "", names: list[str] | None = None,
                first: bool = False) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce,
                                             resource_names=names or [])
        if first:
            req.node.id = self.node
            req.node.cluster = self.cluster
            if self.node_metadata is not None:
                req.node.metadata.CopyFrom(self.node_metadata)
        return req

    def mark_baseline(self) -> None:
        """Remember the versions now held; the next differing ACK counts as 'changed'."""
        self.baseline = dict(self.versions)
        self.changed.clear()
        self.last_change_ack = None
        self.changed_types = set()

    async def run(self, channel: grpc.aio.Channel) -> None:
        """Reconnect on a failed stream as Envoy does (the CP's gRPC core used to cancel calls past 1,000 waiting
        for their handler; see xds.server.MAX_PENDING_STREAMS)."""
        while True:
            try:
                return await self._stream(channel)
            except asyncio.InvalidStateError as exc:  # a write after grpcio ended the call: a failed stream too
                self.error = f"InvalidStateError: {exc}"
                self.reconnects += 1
                await asyncio.sleep(0.05 * self.reconnects)
            except grpc.aio.AioRpcError as exc:
                self.error = f"{exc.code().name}: {exc.details()}"
                self.reconnects += 1
                if self.reconnects > 20 or exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise
                await asyncio.sleep(0.05 * self.reconnects)

    def _synced_now(self, want_eds: bool, want_rds: bool = False) -> bool:
        return (CLUSTER in self.versions and LISTENER in self.versions and (not want_eds or ENDPOINT in self.versions)
                and (not want_rds or ROUTE in self.versions) and (not self.secrets or SECRET in self.versions))

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=tuple(self.metadata), wait_for_ready=True)
        eds: list[str] | None = None  # current EDS subscription; None until the first CDS response
        rds: list[str] = []  # current RDS subscription, from the HCMs of the last LDS response
        last: dict[str, tuple[str, str]] = {}  # type -> (version, nonce) of the last response
        await call.write(self.request(CLUSTER, first=True))
        await call.write(self.request(LISTENER))
        async for resp in call:
            self.responses += 1
            t = resp.type_url
            new_eds = eds_names(resp) if t == CLUSTER else None
            new_rds = rds_names(resp) if t == LISTENER else None
            names = eds if t == ENDPOINT else rds if t == ROUTE else sorted(self.secrets) if t == SECRET else None
            await call.write(self.request(t, resp.version_info, resp.nonce, names))
            last[t] = (resp.version_info, resp.nonce)
            now = time.perf_counter()
            self.versions[t] = resp.version_info
            self.sizes[t], self.counts[t] = sum(len(r.value) for r in resp.resources), len(resp.resources)
            if new_eds is not None and eds is None and self.secrets:
                # Envoy asks for an ADS SDS secret when it builds the first cluster that refers to it
                await call.write(self.request(SECRET, names=sorted(self.secrets)))
            if new_eds is not None and new_eds != eds:
                eds = new_eds
                if eds:  # Envoy (re)subscribes EDS whenever the set of EDS clusters changes
                    v, n = last.get(ENDPOINT, ("", ""))
                    await call.write(self.request(ENDPOINT, v, n, eds))
            if new_rds is not None and new_rds != rds:
                rds = new_rds
                if rds:  # Envoy subscribes RDS for the route configurations its listeners name
                    v, n = last.get(ROUTE, ("", ""))
                    await call.write(self.request(ROUTE, v, n, rds))
            if self.baseline is not None and self.baseline.get(t) != resp.version_info:
                self.last_change_ack = now
                self.changed_types.add(t)
                self.changed.set()
            if not self.synced.is_set() and eds is not None and LISTENER in self.versions \
                    and self._synced_now(bool(eds), bool(rds)):
                self.synced.set()


def channel_options(server_name: str | None = None) -> list[tuple[str, object]]:
    # A local subchannel pool gives each channel its own TCP connection, as N real Envoys would have;
    # grpc's default global pool would quietly multiplex every "proxy" over one connection.
    opts: list[tuple[str, object]] = [("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.use_local_subchannel_pool", 1)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def open_channels(target: str, count: int, *, ca_pem: bytes | None = None,
                  server_name: str | None = None) -> list[grpc.aio.Channel]:
    """`count` independent connections to `target`; TLS trusting `ca_pem` when given, else plaintext."""
    opts = channel_options(server_name)
    if ca_pem is None:
        return [grpc.aio.insecure_channel(target, options=opts) for _ in range(count)]
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return [grpc.aio.secure_channel(target, creds, options=opts) for _ in range(count)]


def start(fakes: Sequence[FakeProxy], chans: Sequence[grpc.aio.Channel]) -> list[asyncio.Task[None]]:
    """One task per proxy, spread round-robin over the channels."""
    return [asyncio.create_task(f.run(chans[i % len(chans)])) for i, f in enumerate(fakes)]


async def wait_all(events: list[asyncio.Event], tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for every event; fail fast if a proxy task dies, and say how far it got on timeout."""
    waiter = asyncio.gather(*(e.wait() for e in events))
    done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for t in done:
            if t.exception():
                raise t.exception()  # type: ignore[misc]
        raise TimeoutError(f"only {sum(e.is_set() for e in events)}/{len(events)} done after {timeout}s")


async def close(tasks: Sequence[asyncio.Task[None]], chans: Sequence[grpc.aio.Channel]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in chans), return_exceptions=True)
