"""MeshTrace through a real mesh (mTLS on): the test client calls web-1's outbound, which carries the request to
backend-1's inbound, so the two traced hops are web's egress and backend's ingress. A Zipkin receiver (v2 JSON over
HTTP) and an OTLP/gRPC receiver written here get each request's spans; a header tag names the request, so every
assertion is about one request the test sent.

Envoy buffers spans per worker and sends them every 5 s (its default flush interval for both tracers), or sooner
once 5 are buffered; the waits below are bounded by that interval.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.test_mesh_routes import dataplane
from otlp_receiver import OtlpReceiver
from testlib import free_port, wait_for
from trace_receivers import DatadogReceiver, ZipkinReceiver

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "w_in", "w_out")}
WEB_OUTBOUND = f"""\
  outbound:
  - port: {PORTS['w_out']}
    tags:
      kuma.io/service: backend
"""
URL = f"http://127.0.0.1:{PORTS['w_out']}/"
FLUSH = 5.0  # Envoy's span flush interval (tracing.zipkin / tracing.opentelemetry flush_interval_ms defaults)
REQ_HEADER, REQ_TAG = "x-test-req", "test.req"


def trace(backend: dict[str, Any], sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Kuma's shape: mesh-wide, one backend, a header tag naming the request and a literal tag."""
    default: dict[str, Any] = {"backends": [backend], "tags": [
        {"name": REQ_TAG, "header": {"name": REQ_HEADER, "default": "none"}}, {"name": "team", "literal": "core"}]}
    if sampling is not None:
        default["sampling"] = sampling
    return {"type": "MeshTrace", "mesh": "default", "name": "trace", "spec": {
        "targetRef": {"kind": "Mesh"}, "default": default}}


def put(cp: Any, doc: dict[str, Any]) -> None:
    r = httpx.put(f"{cp.api}/meshes/default/meshtraces/{doc['name']}", json=doc, timeout=5)
    assert r.status_code in (200, 201), r.text


@pytest.fixture(scope="module")
def mesh(cp, agents) -> Iterator[BackendApp]:
    app = BackendApp("b1")
    started = [agents("backend-1", dataplane("backend-1", "backend", PORTS["b_in"], app.port, "http"), wait=False),
               agents("web-1", dataplane("web-1", "web", PORTS["w_in"], 1, "http", outbound=WEB_OUTBOUND),
                      wait=False)]
    for a in started:
        a.wait_ready(40)
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: c.get(URL).headers.get("x-instance") == "b1", 30, what="web -> backend through the mesh")
    yield app
    httpx.delete(f"{cp.api}/meshes/default/meshtraces/trace", timeout=5)
    app.close()


def send(client: httpx.Client, prefix: str, **headers: str) -> str:
    rid = f"{prefix}-{uuid.uuid4().hex[:12]}"
    r = client.get(URL, headers={REQ_HEADER: rid, **headers})
    assert r.status_code == 200 and r.headers.get("x-instance") == "b1", r.text
    return rid


def first_traced(client: httpx.Client, spans_of: Any, services: set[str], timeout: float = 40,
                 prefix: str = "warm", **headers: str) -> str:
    """Send a request every half second until one is reported by every proxy in `services` (they all have the new
    config and their tracers reach the receiver); the id of the first such request."""
    sent: list[str] = []

    def traced() -> str | None:
        sent.append(send(client, prefix, **headers))
        return next((r for r in sent if {s for s, _ in spans_of(r)} >= services), None)

    return wait_for(traced, timeout, interval=0.5, what=f"spans from {sorted(services)}")  # type: ignore[no-any-return]


def zipkin_spans(zipkin: ZipkinReceiver) -> Any:
    def of(rid: str) -> list[tuple[str, dict[str, Any]]]:
        return [(s.get("localEndpoint", {}).get("serviceName", ""), s) for s in zipkin.spans()
                if s.get("tags", {}).get(REQ_TAG) == rid]
    return of


def otlp_spans(otlp: OtlpReceiver) -> Any:
    def of(rid: str) -> list[tuple[str, Any]]:
        return [(s.service_name or "", s) for s in otlp.spans() if s.attributes.get(REQ_TAG) == rid]
    return of


def test_zipkin_one_trace_across_web_and_backend(mesh, cp) -> None:
    with ZipkinReceiver() as zipkin, httpx.Client(timeout=3) as client:
        put(cp, trace({"type": "Zipkin", "zipkin": {"url": zipkin.url}}))
        of = zipkin_spans(zipkin)
        first_traced(client, of, {"web", "backend"})
        rid = send(client, "zipkin")
        zipkin.wait_for_spans(lambda _: len(of(rid)) >= 2, FLUSH * 2 + 2)
        spans = dict(of(rid))
        assert sorted(s for s, _ in of(rid)) == ["backend", "web"], of(rid)
        web, backend = spans["web"], spans["backend"]
        print(f"zipkin: request {rid}: web {web['kind']} span {web['id']} and backend {backend['kind']} span "
              f"{backend['id']} in trace {web['traceId']}; {zipkin.posts} POSTs, {len(zipkin.spans())} spans in all")
        assert (web["kind"], backend["kind"]) == ("CLIENT", "SERVER")
        assert web["traceId"] == backend["traceId"] and len(web["traceId"]) in (16, 32)
        # sharedSpanContext (Kuma's default true): the server side joins the client's span, as B3 intends
        assert backend["id"] == web["id"] and backend.get("shared") is True
        for s in (web, backend):
            assert s["tags"]["team"] == "core" and s["tags"]["kuma.mesh"] == "default"
            assert s["tags"].get("http.status_code") == "200"
        assert zipkin.rejected == []


def test_otlp_one_trace_across_web_and_backend(mesh, cp) -> None:
    with OtlpReceiver() as otlp, httpx.Client(timeout=3) as client:
        put(cp, trace({"type": "OpenTelemetry", "openTelemetry": {"endpoint": otlp.endpoint}}))
        of = otlp_spans(otlp)
        first_traced(client, of, {"web", "backend"})
        rid = send(client, "otlp")
        otlp.wait_for_spans(lambda _: len(of(rid)) >= 2, FLUSH * 2 + 2)
        spans = dict(of(rid))
        assert sorted(s for s, _ in of(rid)) == ["backend", "web"], of(rid)
        web, backend = spans["web"], spans["backend"]
        print(f"otlp: request {rid}: web span {web.span_id} → backend span {backend.span_id} (parent "
              f"{backend.parent_span_id}) in trace {web.trace_id}; {len(otlp.trace_exports())} exports, "
              f"{len(otlp.spans())} spans in all")
        assert (web.kind, backend.kind) == (3, 2)  # CLIENT, SERVER
        assert web.trace_id == backend.trace_id and len(web.trace_id) == 32 and web.trace_id != "0" * 32
        assert backend.parent_span_id == web.span_id  # W3C traceparent carried the context across the hop
        for s in (web, backend):
            assert s.attributes["team"] == "core" and s.attributes["kuma.mesh"] == "default"


def datadog_spans(dd: DatadogReceiver) -> Any:
    def of(rid: str) -> list[tuple[str, dict[str, Any]]]:
        return [(s.get("service", ""), s) for s in dd.spans() if s.get("meta", {}).get(REQ_TAG) == rid]
    return of


def test_datadog_split_service_one_trace(mesh, cp) -> None:
    """The Datadog agent's msgpack API; with splitService each side reports its own service name."""
    with DatadogReceiver() as dd, httpx.Client(timeout=3) as client:
        put(cp, trace({"type": "Datadog", "datadog": {"url": dd.url, "splitService": True}}))
        of = datadog_spans(dd)
        names = {"web_OUTBOUND_backend", "backend_INBOUND"}
        first_traced(client, of, names)
        rid = send(client, "datadog")
        dd.wait_for_spans(lambda _: {s for s, _ in of(rid)} >= names, FLUSH * 2 + 2)
        spans = dict(of(rid))
        assert sorted(s for s, _ in of(rid)) == sorted(names), of(rid)
        web, backend = spans["web_OUTBOUND_backend"], spans["backend_INBOUND"]
        print(f"datadog: request {rid}: web span {web['span_id']} → backend span {backend['span_id']} (parent "
              f"{backend['parent_id']}) in trace {web['trace_id']}; {dd.posts} payloads, {len(dd.spans())} spans")
        assert web["trace_id"] == backend["trace_id"] != 0
        assert web["meta"].get("_dd.p.tid") == backend["meta"].get("_dd.p.tid")  # the upper 64 bits, if any
        assert backend["parent_id"] == web["span_id"]
        for s in (web, backend):
            assert s["meta"]["team"] == "core" and s["meta"]["kuma.mesh"] == "default"
        assert dd.rejected == []


def test_zero_percent_sampling_sends_none(mesh, cp) -> None:
    """random 0 %: no request starts a trace. The same policy keeps client sampling at its default 100 %, so a
    request carrying x-client-trace-id is still traced: it proves the receiver and the tracer are live, and once its
    spans arrived, one more flush interval covers whatever any worker could still hold."""
    n = 30
    with ZipkinReceiver() as zipkin, httpx.Client(timeout=3) as client:
        put(cp, trace({"type": "Zipkin", "zipkin": {"url": zipkin.url}}, sampling={"random": 0}))
        of = zipkin_spans(zipkin)

        # Only this policy names this receiver, so spans reaching it mean the 0 % policy is in force on both
        # proxies (here through client sampling); every request sent after that point meets it.
        first_traced(client, of, {"web", "backend"}, prefix="forced", **{"x-client-trace-id": uuid.uuid4().hex})
        unsampled = [send(client, "zero") for _ in range(n)]
        last = send(client, "forced", **{"x-client-trace-id": uuid.uuid4().hex})
        zipkin.wait_for_spans(lambda _: {s for s, _ in of(last)} >= {"web", "backend"}, FLUSH * 2 + 2)
        time.sleep(FLUSH + 1)  # a span buffered by another worker before `last` would be sent within one interval
        leaked = [s for s in zipkin.spans() if s.get("tags", {}).get(REQ_TAG, "").startswith("zero-")]
        forced = [s for s in zipkin.spans() if s.get("tags", {}).get(REQ_TAG, "").startswith("forced-")]
        print(f"random sampling 0 %: {len(leaked)} spans for {n} requests; {len(forced)} spans for the "
              f"client-sampled requests that bracket them")
        assert len(unsampled) == n and leaked == []
        assert len({s["traceId"] for _, s in of(last)}) == 1

