"""The MeshMetric OpenTelemetry backend: every `refreshInterval` the agent takes the same merged scrape Prometheus
gets (Envoy filtered by the profiles, plus the applications) and pushes it to the collector with OTLP/gRPC
(`MetricsService/Export`), as kuma-dp does.

The request is encoded here by hand (a few nested messages): no protobuf classes to load, and no tie to one
version of the OTLP protos. gRPC itself is imported only when a backend is configured (it costs ~11 MB RSS, a
quarter of the agent's budget); counters become cumulative monotonic sums, every other sample a gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dpagent.log import kv

log = logging.getLogger("dpagent.otlp")

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
EXPORT_TIMEOUT = 10.0
SCOPE = "dpagent"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class OtelBackend:
    endpoint: str  # host:port of an OTLP/gRPC receiver
    interval: float


# ---- protobuf wire encoding (only what an ExportMetricsServiceRequest needs) ------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, value: str) -> bytes:
    return _ld(field, value.encode())


def _kv(key: str, value: str) -> bytes:
    return _str(1, key) + _ld(2, _str(1, value))  # KeyValue{key, value: AnyValue{string_value}}


def _point(labels: Mapping[str, str], now_ns: int, value: float) -> bytes:
    attrs = b"".join(_ld(7, _kv(k, v)) for k, v in sorted(labels.items()))
    return attrs + _varint(3 << 3 | 1) + struct.pack("<Q", now_ns) + _varint(4 << 3 | 1) + struct.pack("<d", value)


def encode_request(text: str, resource: Mapping[str, str], now_ns: int) -> bytes:
    """Prometheus text → ExportMetricsServiceRequest bytes, one Metric per sample name."""
    types: dict[str, str] = {}
    points: dict[str, list[bytes]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        points.setdefault(m.group(1), []).append(_point(labels, now_ns, value))
    metrics = []
    for name, pts in points.items():
        body = b"".join(_ld(1, p) for p in pts)
        if types.get(name) == "counter" or (name.endswith("_total") and types.get(name[:-6]) == "counter"):
            data = _ld(7, body + _varint(2 << 3) + _varint(2) + _varint(3 << 3) + _varint(1))  # cumulative, monotonic
        else:
            data = _ld(5, body)
        metrics.append(_ld(2, _str(1, name) + data))
    res = _ld(1, b"".join(_ld(1, _kv(k, v)) for k, v in sorted(resource.items())))
    scope = _ld(2, _ld(1, _str(1, SCOPE)) + b"".join(metrics))
    return _ld(1, res + scope)


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        kv(log, logging.ERROR, "OTLP push loop died; no more pushes until the MeshMetric conf changes",
           task=task.get_name(), error=repr(task.exception()))


# ---- pushing ---------------------------------------------------------------------------------------------------

class OtlpPusher:
    """One loop per configured backend, replaced when the conf changes; failures are counted and logged, never
    raised (the collector being away must not disturb the proxy)."""

    def __init__(self, scrape: Callable[[], Awaitable[str]], resource: Mapping[str, str]) -> None:
        self.scrape = scrape
        self.resource = dict(resource)
        self.backends: tuple[OtelBackend, ...] = ()
        self._tasks: list[asyncio.Task[None]] = []
        self.exports = 0
        self.failures = 0

    def set_backends(self, backends: tuple[OtelBackend, ...]) -> None:
        if backends == self.backends:
            return
        for t in self._tasks:
            t.cancel()
        self.backends = backends
        self._tasks = [asyncio.get_running_loop().create_task(self._run(b), name=f"otlp-push {b.endpoint}")
                       for b in backends]
        for t in self._tasks:
            t.add_done_callback(_log_death)

    async def push_once(self, channel: Any) -> None:
        body = encode_request(await self.scrape(), self.resource, time.time_ns())
        call = channel.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        await call(body, timeout=EXPORT_TIMEOUT)

    async def _run(self, backend: OtelBackend) -> None:
        import grpc  # only agents with an OpenTelemetry backend pay for gRPC

        channel = grpc.aio.insecure_channel(backend.endpoint)
        try:
            while True:
                await asyncio.sleep(backend.interval)
                try:
                    await self.push_once(channel)
                    self.exports += 1
                except Exception as e:  # grpc.aio.AioRpcError, the scrape failing, ...
                    self.failures += 1
                    kv(log, logging.WARNING, "OTLP metrics push failed", endpoint=backend.endpoint,
                       error=f"{type(e).__name__}: {str(e)[:200]}")
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
