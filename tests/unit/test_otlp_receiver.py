"""The tests' OTLP collector decodes what a real gRPC exporter sends, so a tracing or logging test that fails has
failed in the mesh, not in its receiver."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp_receiver import LOG_RECORDS, LOGS_SERVICE, SCOPE_LOGS, SCOPE_SPANS, TRACE_SERVICE, OtlpReceiver


def kv(key: str, value: common_pb2.AnyValue) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=value)


def resource(service: str) -> resource_pb2.Resource:
    return resource_pb2.Resource(attributes=[kv("service.name", common_pb2.AnyValue(string_value=service))])


@pytest.fixture
def otlp():
    with OtlpReceiver() as r:
        yield r


def test_spans_arrive_with_ids_attributes_and_service(otlp: OtlpReceiver) -> None:
    span = trace_pb2.Span(trace_id=bytes(range(16)), span_id=b"\x01" * 8, parent_span_id=b"\x02" * 8, name="ingress",
                          kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=5, end_time_unix_nano=9,
                          attributes=[kv("http.status_code", common_pb2.AnyValue(string_value="200")),
                                      kv("n", common_pb2.AnyValue(int_value=3)),
                                      kv("l", common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[
                                          common_pb2.AnyValue(bool_value=True)])))])
    req = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource("backend"), **{SCOPE_SPANS: [{"spans": [span]}]})])
    with grpc.insecure_channel(otlp.endpoint) as ch:
        export = ch.unary_unary(f"/{TRACE_SERVICE}/Export",
                                request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
                                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        export(req, timeout=5, metadata=[("x-test", "1")])
    [got] = otlp.wait_for_spans(lambda s: len(s) == 1, timeout=5)
    assert got.trace_id == "000102030405060708090a0b0c0d0e0f" and got.span_id == "01" * 8
    assert got.parent_span_id == "02" * 8 and got.name == "ingress" and got.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert got.service_name == "backend"
    assert got.attributes == {"http.status_code": "200", "n": 3, "l": [True]}
    assert otlp.metadata()[0]["x-test"] == "1" and len(otlp.trace_exports()) == 1


def test_log_records_arrive_with_body_and_attributes(otlp: OtlpReceiver) -> None:
    rec = logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value="GET / 200"), severity_number=9,
                             attributes=[kv("kuma.mesh", common_pb2.AnyValue(string_value="default"))])
    req = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource("web"), **{SCOPE_LOGS: [{LOG_RECORDS: [rec, rec]}]})])
    with grpc.insecure_channel(otlp.endpoint) as ch:
        ch.unary_unary(f"/{LOGS_SERVICE}/Export",
                       request_serializer=logs_service_pb2.ExportLogsServiceRequest.SerializeToString,
                       response_deserializer=logs_service_pb2.ExportLogsServiceResponse.FromString)(req, timeout=5)
    got = otlp.wait_for_log_records(lambda r: len(r) == 2, timeout=5)
    assert [(r.body, r.attributes, r.service_name) for r in got] == [("GET / 200", {"kuma.mesh": "default"}, "web")] * 2
    otlp.clear()
    assert otlp.log_records() == [] and otlp.spans() == []


def test_waiting_for_what_never_comes_times_out(otlp: OtlpReceiver) -> None:
    with pytest.raises(TimeoutError, match="0 received"):
        otlp.wait_for_spans(lambda s: len(s) > 0, timeout=0.2)


def test_a_wait_condition_may_read_the_receiver(otlp: OtlpReceiver) -> None:
    """The lock is re-entrant: a condition that calls spans() while wait_for_spans holds it must not deadlock."""
    assert otlp.wait_for_spans(lambda _: otlp.spans() == [], timeout=1) == []
