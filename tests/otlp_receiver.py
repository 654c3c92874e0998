"""An OTLP/gRPC collector for tests: TraceService/Export and LogsService/Export over the real OpenTelemetry protos.

Envoy's tracers and access loggers push to a collector; a test needs to see exactly what arrived (which spans,
under which trace id, from which service) to prove the mesh wired them, so this keeps every export in memory.
The protos come from `xds-protos`, which ships `opentelemetry.proto.*` because Envoy's own protos import them
(no `_pb2_grpc` stubs, so the two services are registered with generic handlers). Its copy is an older OTLP
revision: field 2 of ResourceSpans/ResourceLogs is named `instrumentation_library_*` there and `scope_*` today, with
the same number and the same inner layout, so what a current Envoy sends decodes field for field. Installing
`opentelemetry-proto` as well would overwrite the same files from a second distribution, whichever installed last
winning, so the receiver reads either spelling instead (`SCOPE_SPANS` etc. name the one in use).

A synchronous gRPC server on its own thread pool: the e2e tests are synchronous, and a receiver that needs no event
loop works the same from sync and async tests.

    with OtlpReceiver() as otlp:            # binds 127.0.0.1:<testlib.free_port()>
        ...point a backend at otlp.endpoint ("127.0.0.1:<port>") or otlp.url ("http://127.0.0.1:<port>")...
        spans = otlp.wait_for_spans(lambda got: len(got) >= 2, timeout=10)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from testlib import free_port

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


def _field(message: Any, *names: str) -> str:
    fields = message.DESCRIPTOR.fields_by_name
    return next(n for n in names if n in fields)


# The field names of this proto revision (see the module docstring), for reading and for building requests.
SCOPE_SPANS = _field(trace_pb2.ResourceSpans, "scope_spans", "instrumentation_library_spans")
SCOPE_LOGS = _field(logs_pb2.ResourceLogs, "scope_logs", "instrumentation_library_logs")
SCOPE = _field(getattr(trace_pb2, "ScopeSpans", None) or trace_pb2.InstrumentationLibrarySpans,
               "scope", "instrumentation_library")
LOG_RECORDS = _field(getattr(logs_pb2, "ScopeLogs", None) or logs_pb2.InstrumentationLibraryLogs,
                     "log_records", "logs")


def any_value(v: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as plain Python (str, bool, int, float, bytes, list or dict); None when unset."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """Repeated KeyValue as a dict (a later duplicate key wins, which OTLP forbids anyway)."""
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span with its resource's attributes; ids are lowercase hex, as Zipkin and W3C headers spell them."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # trace_pb2.Span.SpanKind: 2 = SERVER, 3 = CLIENT
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    start_unix_nano: int
    end_unix_nano: int
    status_code: int
    raw: trace_pb2.Span = field(repr=False, compare=False)

    @property
    def service_name(self) -> str | None:
        return self.resource.get("service.name")


@dataclass(frozen=True)
class ReceivedLogRecord:
    """One log record with its resource's attributes; `body` is the AnyValue as plain Python."""

    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    severity_number: int
    severity_text: str
    time_unix_nano: int
    trace_id: str
    span_id: str
    raw: logs_pb2.LogRecord = field(repr=False, compare=False)

    @property
    def service_name(self) -> str | None:
        return self.resource.get("service.name")


class OtlpReceiver:
    """Collects what OTLP/gRPC exporters send; every accessor returns a snapshot copy, safe from any thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, max_workers: int = 4) -> None:
        """Binds at once (so `port` is known before `start()`); the port defaults to `testlib.free_port()`."""
        self.host = host
        port = free_port() if port is None else port
        self._lock = threading.RLock()  # `until` callbacks may call spans() while _wait holds it
        self._changed = threading.Condition(self._lock)
        self._spans: list[ReceivedSpan] = []
        self._logs: list[ReceivedLogRecord] = []
        self._trace_exports: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._logs_exports: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self._metadata: list[dict[str, str]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        self._server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(
                self._export_traces,
                request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),
            grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(
                self._export_logs,
                request_deserializer=logs_service_pb2.ExportLogsServiceRequest.FromString,
                response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString)}),
        ))
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(target)
        if not self.port:
            raise OSError(f"OTLP receiver could not bind {target}")
        self._started = False

    # lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        if not self._started:
            self._server.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._server.stop(grace=None)
            self._started = False

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """host:port, what a gRPC exporter dials."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    # what arrived ----------------------------------------------------------------------------------------------

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def log_records(self) -> list[ReceivedLogRecord]:
        with self._lock:
            return list(self._logs)

    def trace_exports(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """Every Export request as received, for assertions on batching or resource shape."""
        with self._lock:
            return list(self._trace_exports)

    def logs_exports(self) -> list[logs_service_pb2.ExportLogsServiceRequest]:
        with self._lock:
            return list(self._logs_exports)

    def metadata(self) -> list[dict[str, str]]:
        """The gRPC metadata (lowercase keys) of every Export call, traces and logs in arrival order."""
        with self._lock:
            return list(self._metadata)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._logs.clear()
            self._trace_exports.clear()
            self._logs_exports.clear()
            self._metadata.clear()

    def wait_for_spans(self, until: Callable[[list[ReceivedSpan]], bool], timeout: float) -> list[ReceivedSpan]:
        """Block until `until(all spans so far)` holds; raise TimeoutError with what did arrive otherwise."""
        return self._wait(lambda: self._spans, until, timeout, "spans")

    def wait_for_log_records(self, until: Callable[[list[ReceivedLogRecord]], bool],
                             timeout: float) -> list[ReceivedLogRecord]:
        return self._wait(lambda: self._logs, until, timeout, "log records")

    def _wait(self, items: Callable[[], list[Any]], until: Callable[[list[Any]], bool], timeout: float,
              what: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = list(items())
                if until(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"OTLP receiver: condition on {what} not met within {timeout:g}s; "
                                       f"{len(got)} received: {got[-5:]!r}")
                self._changed.wait(left)

    # gRPC handlers ---------------------------------------------------------------------------------------------

    def _record_metadata(self, context: grpc.ServicerContext) -> None:
        self._metadata.append({k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)})

    def _export_traces(self, req: trace_service_pb2.ExportTraceServiceRequest,
                       context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = [
            ReceivedSpan(trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                         name=s.name, kind=s.kind, attributes=attributes(s.attributes),
                         resource=attributes(rs.resource.attributes), scope=getattr(ss, SCOPE).name,
                         start_unix_nano=s.start_time_unix_nano, end_unix_nano=s.end_time_unix_nano,
                         status_code=s.status.code, raw=s)
            for rs in req.resource_spans for ss in getattr(rs, SCOPE_SPANS) for s in ss.spans]
        with self._changed:
            self._trace_exports.append(req)
            self._record_metadata(context)
            self._spans.extend(spans)
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def _export_logs(self, req: logs_service_pb2.ExportLogsServiceRequest,
                     context: grpc.ServicerContext) -> logs_service_pb2.ExportLogsServiceResponse:
        records = [
            ReceivedLogRecord(body=any_value(r.body), attributes=attributes(r.attributes),
                              resource=attributes(rl.resource.attributes), scope=getattr(sl, SCOPE).name,
                              severity_number=r.severity_number, severity_text=r.severity_text,
                              time_unix_nano=r.time_unix_nano, trace_id=r.trace_id.hex(), span_id=r.span_id.hex(),
                              raw=r)
            for rl in req.resource_logs for sl in getattr(rl, SCOPE_LOGS) for r in getattr(sl, LOG_RECORDS)]
        with self._changed:
            self._logs_exports.append(req)
            self._record_metadata(context)
            self._logs.extend(records)
            self._changed.notify_all()
        return logs_service_pb2.ExportLogsServiceResponse()
