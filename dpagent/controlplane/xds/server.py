"""State-of-the-World ADS server: authenticates each stream, then pushes snapshot changes with per-type nonces.

Follows go-control-plane's stream semantics (stale nonces ignored, ACK/NACK by nonce, CDS/EDS before LDS/RDS)
and adds what Kuma bolts on as callbacks: stream auth that is re-checked while the stream lives (so a revoked or
expired token cuts a proxy off, Kuma #3379), a NACK backoff, and connect/disconnect hooks for registration.
Responses are framed from each Resource's cached bytes, so shared config is never re-serialised per proxy.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from dpagent.controlplane.xds.cache import SnapshotCache, Watch
from dpagent.controlplane.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    WILDCARD_TYPES,
    Snapshot,
    encode_response,
    response_rank,
)
from dpagent.errors import PortInUseError
from dpagent.log import Throttled, kv

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
MiB = 1024 * 1024

AuthInfo = Any
Authenticate = Callable[[dict[str, str], base_pb2.Node], Awaitable[AuthInfo]]
Revalidate = Callable[[AuthInfo], Awaitable[None]]
# Hooks get the node key and the stream's own id: a proxy that reconnects before the CP noticed its old connection
# die has two streams for a while, and only the end of its *last* stream means the proxy is gone.
OnConnect = Callable[[str, int, AuthInfo], Awaitable[None]]
OnDisconnect = Callable[[str, int, bool], Awaitable[None]]
NodeKey = Callable[[str, AuthInfo], str]

# A client that opens a stream and says nothing holds a file descriptor and a task; one that has not sent its first
# (authenticating) request within this time is cut off.
FIRST_MESSAGE_TIMEOUT = 10.0
# Envoy keeps one ADS stream per connection (two for a moment while it re-opens one); more is not a proxy.
MAX_STREAMS_PER_CONNECTION = 8
CANCEL_SETTLE = 0.25  # how long a stream's end may wait to tell a reset from a goodbye (see _cancelled_soon)
MAX_PENDING_STREAMS = 50_000
KEEPALIVE = 60.0  # seconds between the CP's keepalive pings on one ADS connection


class StreamError(Exception):
    """Ends one stream with a gRPC status; the message goes to the proxy, so it must explain the fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_RESEND = frozenset({"\0resend"})  # a `sent_for` that matches no subscription, forcing the next answer


@dataclass(slots=True)
class _TypeState:
    names: frozenset[str] | None  # None: wildcard (the whole type), otherwise the SotW subscription
    nonce: str | None = None  # last nonce sent; requests quoting another one are stale
    version: str | None = None  # last version sent (or that the proxy said it already had)
    sent_for: frozenset[str] | None = None  # subscription the last response answered
    not_before: float = 0.0  # NACK backoff: no new version of this type before this loop time


class _Stream:
    """Protocol state of one ADS stream; request handling is synchronous so it cannot interleave with a push."""

    def __init__(self, server: AdsServer, node_id: str, watch: Watch, raw_id: str = "") -> None:
        self.server = server
        self.node_id = node_id  # the cache key (canonical form of the node id)
        self.raw_id = raw_id or node_id  # as the proxy sent it; it may not change on the stream
        self.watch = watch
        self.types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)
        self._timers: list[asyncio.TimerHandle] = []

    @staticmethod
    def _subscription(req: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
        if req.type_url in WILDCARD_TYPES:
            return None
        return frozenset(req.resource_names)

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        cache = self.server.cache
        if req.node.id and req.node.id != self.raw_id:
            raise StreamError(grpc.StatusCode.PERMISSION_DENIED,
                              f"node id changed on an open stream ({self.raw_id!r} -> {req.node.id!r}); "
                              "one stream serves one proxy: reconnect to change identity")
        t = req.type_url
        if not t:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "type_url is required on every ADS request")
        st = self.types.get(t)
        if st is None:
            st = self.types[t] = _TypeState(names=self._subscription(req))
            if req.version_info:
                # A reconnecting proxy says what it has; if the content hash matches, there is nothing to send.
                st.version, st.sent_for = req.version_info, st.names
                cache.record_ack(self.node_id, t, req.version_info)
            self.watch.mark([t])
            return
        if st.nonce is not None and req.response_nonce != st.nonce:
            kv(log, logging.DEBUG, "stale xDS request ignored", proxy=self.node_id, type=t,
               nonce=req.response_nonce, latest=st.nonce)
            return
        if st.nonce is not None:
            if req.HasField("error_detail"):
                error = req.error_detail.message or f"code {req.error_detail.code}"
                cache.record_nack(self.node_id, t, st.version or "", error)
                st.not_before = asyncio.get_running_loop().time() + self.server.nack_backoff
                kv(log, logging.WARNING, "proxy rejected config (NACK)", proxy=self.node_id, type=t,
                   version=st.version, error=error)
            else:
                cache.record_ack(self.node_id, t, req.version_info)
        names = self._subscription(req)
        if names != st.names:
            st.names = names
            self.watch.mark([t])

    async def send_pending(self, context: grpc.aio.ServicerContext, type_urls: list[str]) -> None:
        """Answer every marked type that has something new, in response order (clusters before listeners).

        Every CDS push re-sends EDS as well, even if no endpoint changed: Envoy re-creates a changed cluster, and
        the new one stays warming (for initial_fetch_timeout, 15 s) until an EDS response arrives for it.
        """
        snap = self.server.cache.get_snapshot(self.node_id)
        if snap is None:
            return
        remaining = set(type_urls)
        while remaining:
            t = min(remaining, key=response_rank)
            remaining.discard(t)
            if await self._send(context, snap, t) and t == CLUSTER and ENDPOINT in self.types:
                self.types[ENDPOINT].sent_for = _RESEND
                remaining.add(ENDPOINT)

    async def _send(self, context: grpc.aio.ServicerContext, snap: Snapshot, t: str) -> bool:
        st = self.types.get(t)
        if st is None or t not in snap or (st.names is not None and not st.names):
            return False  # not requested yet, not ready yet, or an empty subscription
        version, body, _ = snap.select(t, st.names)
        if version == st.version and st.names == st.sent_for:
            return False  # the proxy has exactly this (also: a NACKed version is never re-sent)
        loop = asyncio.get_running_loop()
        wait = st.not_before - loop.time()
        if wait > 0:
            self._timers.append(loop.call_later(wait, self.watch.mark, [t]))
            return False
        nonce = str(next(self._nonces))
        # Record before writing: the ACK can be read while the write is still being awaited.
        st.nonce, st.version, st.sent_for = nonce, version, st.names
        self.server.cache.record_sent(self.node_id, t, version, nonce)
        await context.write(encode_response(t, version, body, nonce))
        return True

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


class AdsServer:
    """`AggregatedDiscoveryService` (SotW only) over a SnapshotCache, with stream auth and lifecycle hooks."""

    def __init__(
        self,
        cache: SnapshotCache,
        authenticate: Authenticate,
        *,
        revalidate: Revalidate | None = None,
        revalidate_interval: float = 5.0,
        nack_backoff: float = 1.0,
        on_connect: OnConnect | None = None,
        on_disconnect: OnDisconnect | None = None,
        node_key: NodeKey | None = None,
        first_message_timeout: float = FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        self.cache = cache
        self.node_key = node_key  # the canonical cache key of an authenticated node id (legacy id forms map here)
        self.first_message_timeout = first_message_timeout
        self._stream_ids = itertools.count(1)
        self._events = Throttled(log, interval=10.0)
        self._refusals = Throttled(log, interval=10.0, burst=20)
        self.authenticate = authenticate
        self.revalidate = revalidate
        self.revalidate_interval = revalidate_interval
        self._rechecker = _Rechecker(revalidate, revalidate_interval) if revalidate is not None else None
        self.nack_backoff = nack_backoff
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.bound_port: int | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register on a grpc.aio server with a pass-through serializer: responses are already bytes."""
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_aggregated_resources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.delta_aggregated_resources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    async def delta_aggregated_resources(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "incremental (delta) xDS is not supported; configure the proxy for SotW ADS (GRPC)")

    async def stream_aggregated_resources(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), self.first_message_timeout)
        except TimeoutError:
            self._events(logging.WARNING, "xDS streams closed for sending no first request in time",
                         kind="first-message-timeout", peer=context.peer(), timeout=f"{self.first_message_timeout:g}s")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no DiscoveryRequest within {self.first_message_timeout:g}s of opening the stream")
        if first is None:
            return
        if not first.node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first ADS request must carry node.id")
        raw_id = first.node.id
        try:
            auth = await self.authenticate(metadata, first.node)
        except Exception as exc:  # any refusal, whatever its type, is an auth failure for the proxy
            message = str(exc) or type(exc).__name__
            self._refusals(logging.WARNING, "xDS stream refused", kind="refused", proxy=raw_id, reason=message)
            code = exc.code if isinstance(exc, StreamError) else grpc.StatusCode.UNAUTHENTICATED
            await context.abort(code, message)
        node_id = self.node_key(raw_id, auth) if self.node_key is not None else raw_id
        await self._serve_stream(node_id, raw_id, auth, first, requests, context)

    async def _serve_stream(
        self,
        node_id: str,
        raw_id: str,
        auth: AuthInfo,
        first: discovery_pb2.DiscoveryRequest,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Run one authenticated stream. Everything it registers (cache count, watch, the connect hook's state) is
        undone in one `finally`, whatever ends it, so a node never keeps a stream that is gone."""
        stream_id = next(self._stream_ids)
        watch = self.cache.watch(node_id)
        self.cache.stream_opened(node_id)
        stream = _Stream(self, node_id, watch, raw_id)
        graceful = False
        failure: StreamError | None = None
        connected = False
        tasks: list[asyncio.Task[None]] = []
        recheck: asyncio.Future[None] | None = None
        try:
            if self.on_connect is not None:
                connected = True  # before the await: a cancelled hook still gets its disconnect
                try:
                    await self.on_connect(node_id, stream_id, auth)
                except Exception as exc:
                    kv(log, logging.ERROR, "xDS connect hook failed", proxy=node_id, error=str(exc))
                    raise StreamError(grpc.StatusCode.UNAVAILABLE,
                                      f"control plane could not register proxy: {exc}") from exc
            kv(log, logging.INFO, "xDS stream opened", proxy=node_id, stream=stream_id,
               streams=self.cache.stream_count(node_id))
            stream.on_request(first)
            tasks.append(asyncio.create_task(self._read(stream, requests)))
            tasks.append(asyncio.create_task(self._push(stream, context)))
            if self._rechecker is not None:
                recheck = self._rechecker.add(auth)
                tasks.append(recheck)  # type: ignore[arg-type] - a plain future: set when a re-check fails
            done: set[asyncio.Task[None]] = set()
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
            for task in done:
                exc = task.exception()
                if isinstance(exc, StreamError):
                    failure = exc
                elif exc is not None:
                    raise exc
                elif task is tasks[0]:
                    # The proxy half-closed its side: an orderly goodbye. A cancelled call (reset, connection
                    # gone) can end the request iterator the same way, and gRPC marks the call cancelled a little
                    # later, so give it that moment before calling the end a goodbye.
                    graceful = not await _cancelled_soon(context)
        except StreamError as exc:
            failure = exc
        finally:
            if recheck is not None and self._rechecker is not None:
                self._rechecker.discard(recheck)
            stream.close()
            self.cache.cancel_watch(watch)
            self.cache.stream_closed(node_id)
            kv(log, logging.INFO, "xDS stream closed", proxy=node_id, stream=stream_id, graceful=graceful,
               reason=failure.message if failure else "", streams_left=self.cache.stream_count(node_id))
            if connected and self.on_disconnect is not None:
                try:
                    await self.on_disconnect(node_id, stream_id, graceful)
                except Exception as exc:
                    kv(log, logging.ERROR, "xDS disconnect hook failed", proxy=node_id, error=str(exc))
        if failure is not None:
            await context.abort(failure.code, failure.message)

    @staticmethod
    async def _read(stream: _Stream, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        async for req in requests:
            stream.on_request(req)

    @staticmethod
    async def _push(stream: _Stream, context: grpc.aio.ServicerContext) -> None:
        while True:
            await stream.send_pending(context, await stream.watch.wait())



async def _cancelled_soon(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call turns out cancelled within CANCEL_SETTLE: a reset reaches the request iterator (which then
    just ends) before gRPC's poller thread marks the call cancelled, by one loop turn or, on a loaded host, by
    several; a crashed proxy counted as a goodbye would be deregistered."""
    deadline = asyncio.get_running_loop().time() + CANCEL_SETTLE
    while not context.cancelled():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class _Rechecker:
    """One timer for every live stream's periodic auth re-check. A sleeping task per stream was most of an idle
    CP's CPU at thousands of streams (each wake-up a timer, a task switch and a store read); one sweep over all
    streams per interval costs a loop iteration per stream and the hook's cached checks.

    Streams are dealt round-robin into TICKS slots, one slot checked per tick: one pass over 5,000 streams at once
    held the event loop for tens of milliseconds, delaying every push that fell behind it. A stream joins a slot
    at once, so it is checked within one interval of opening (a snapshot per pass made a stream that opened just
    after it wait up to two intervals: a revoked token lived that long)."""

    TICKS = 10

    def __init__(self, check: Revalidate, interval: float) -> None:
        self.check = check
        self.interval = interval
        self._slots: list[dict[asyncio.Future[None], AuthInfo]] = [{} for _ in range(self.TICKS)]
        self._slot_of: dict[asyncio.Future[None], int] = {}
        self._next = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def add(self, auth: AuthInfo) -> asyncio.Future[None]:
        """A future that fails with a StreamError when this stream's re-check fails."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot = next(self._next) % self.TICKS
        self._slots[slot][fut] = auth
        self._slot_of[fut] = slot
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="xds-auth-recheck")
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        slot = self._slot_of.pop(fut, None)
        if slot is not None:
            self._slots[slot].pop(fut, None)

    async def _run(self) -> None:
        tick = 0
        while self._slot_of:
            await asyncio.sleep(self.interval / self.TICKS)
            for fut, auth in list(self._slots[tick].items()):
                if fut.done() or fut not in self._slot_of:
                    continue
                try:
                    await self.check(auth)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(StreamError(grpc.StatusCode.UNAUTHENTICATED,
                                                      str(exc) or type(exc).__name__))
            tick = (tick + 1) % self.TICKS


async def serve(
    server: AdsServer,
    address: str,
    port: int,
    *,
    tls: tuple[bytes | str, bytes | str] | None = None,
    port_flag: str = "--xds-port",
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION,
    keepalive: float = KEEPALIVE,
) -> grpc.aio.Server:
    """Start a grpc.aio server for ADS; the bound port (useful with port 0) is left in `server.bound_port`.

    Keepalive pings find proxies that vanished without a FIN, so their disconnect hook runs; the message limit
    is generous because a large mesh's CDS response easily passes gRPC's 4 MiB default.
    """
    grpc_server = grpc.aio.server(options=[
        # One ping per connection per interval: at 5,000 proxies a 15 s interval was most of an idle CP's CPU.
        ("grpc.keepalive_time_ms", int(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_concurrent_streams", max_streams_per_connection),
        # Calls that arrived and wait for the handler queue in gRPC core; past its default 1,000 it cancels new ones
        # at random (a CANCELLED stream the handler never sees), which at thousands of proxies connecting at once
        # was every stream retry of a full sync. Waiting is the backpressure: the proxy's stream simply starts a
        # moment later, and each waiting call costs a few hundred bytes.
        ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS),
        # A TCP or TLS connection that never gets to HTTP/2, or keeps none of its streams, is dropped: such
        # connections cost a file descriptor each, and enough of them lock every proxy out.
        ("grpc.server_handshake_timeout_ms", 10_000),
        ("grpc.max_connection_idle_ms", 60_000),
        # Requests are small (a subscription is a list of names); the limit bounds what an unauthenticated
        # first message can make the CP buffer. Responses may be large.
        ("grpc.max_receive_message_length", 16 * MiB),
        ("grpc.max_send_message_length", 64 * MiB),
        ("grpc.so_reuseport", 0),
    ])
    server.add_to(grpc_server)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        if tls is None:
            bound = grpc_server.add_insecure_port(target)
        else:
            cert_pem, key_pem = (x.encode() if isinstance(x, str) else x for x in tls)
            bound = grpc_server.add_secure_port(target, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    except RuntimeError as exc:
        raise PortInUseError("xDS (ADS gRPC)", address, port, port_flag) from exc
    if not bound:
        raise PortInUseError("xDS (ADS gRPC)", address, port, port_flag)
    server.bound_port = bound
    await grpc_server.start()
    return grpc_server
