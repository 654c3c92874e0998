"""The MeshMetric OpenTelemetry backend: the agent's hand-encoded OTLP request decodes with the OTLP protos (sums
for counters, gauges otherwise, labels as attributes, the resource), and is pushed to a real gRPC receiver on
the backend's interval."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms

from dpagent.agent.meshmetric import MetricsConf
from dpagent.agent.otlp import EXPORT, OtlpPusher, encode_request

TEXT = """# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 7
# TYPE envoy_server_live gauge
envoy_server_live 1
orders_processed_total{dpagent_application="orders",note="a \\"quoted\\" word"} 42
"""


def decode(body: bytes) -> dict[str, Any]:
    req = ms.ExportMetricsServiceRequest.FromString(body)
    [rm] = req.resource_metrics
    out: dict[str, Any] = {"resource": {a.key: a.value.string_value for a in rm.resource.attributes}}
    [scope] = rm.instrumentation_library_metrics  # ScopeMetrics in newer protos: the same field
    for metric in scope.metrics:
        kind = metric.WhichOneof("data")
        data = getattr(metric, kind)
        out[metric.name] = (kind, [(dict((a.key, a.value.string_value) for a in p.attributes), p.as_double)
                                   for p in data.data_points],
                            (data.aggregation_temporality, data.is_monotonic) if kind == "sum" else None)
    return out


def test_encoding_decodes_with_the_otlp_protos() -> None:
    got = decode(encode_request(TEXT, {"service.name": "backend", "mesh": "default"}, 1_700_000_000_000_000_000))
    assert got["resource"] == {"service.name": "backend", "mesh": "default"}
    assert got["envoy_cluster_upstream_rq_total"] == ("sum", [({"envoy_cluster_name": "backend"}, 7.0)], (2, True))
    assert got["envoy_server_live"] == ("gauge", [({}, 1.0)], None)
    assert got["orders_processed_total"] == (
        "gauge", [({"dpagent_application": "orders", "note": 'a "quoted" word'}, 42.0)], None)


def test_conf_parses_otel_backends() -> None:
    body = json.dumps({"observability": {"metrics": {"applications": [], "sidecar": {}, "backends": [
        {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "collector:4317", "refreshInterval": "30s"}},
        {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "other:4317"}},
        {"type": "Prometheus", "prometheus": {"port": 5670}}]}}}).encode()
    conf = MetricsConf.parse(body)
    assert [(b.endpoint, b.interval) for b in conf.otel] == [("collector:4317", 30.0), ("other:4317", 60.0)]


async def test_pushes_to_a_real_grpc_receiver() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def export(request: bytes, context: Any) -> bytes:
        await received.put(request)
        return b""  # an empty ExportMetricsServiceResponse

    handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.metrics.v1.MetricsService", {
        "Export": grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    assert EXPORT.endswith("/Export")

    async def scrape() -> str:
        return TEXT

    pusher = OtlpPusher(scrape, {"service.name": "backend"})
    body = json.dumps({"observability": {"metrics": {"backends": [{"type": "OpenTelemetry", "openTelemetry": {
        "endpoint": f"127.0.0.1:{port}", "refreshInterval": "200ms"}}]}}}).encode()
    pusher.set_backends(MetricsConf.parse(body).otel)
    first = decode(await asyncio.wait_for(received.get(), 5))
    second = decode(await asyncio.wait_for(received.get(), 5))
    assert first["envoy_server_live"] == second["envoy_server_live"] == ("gauge", [({}, 1.0)], None)
    assert pusher.exports >= 1 and pusher.failures == 0
    await pusher.aclose()
    await server.stop(0)
