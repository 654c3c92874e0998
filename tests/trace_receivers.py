"""HTTP span collectors for tests, speaking the wire formats Envoy's tracers send; every span is kept for assertions.

- `ZipkinReceiver`: `POST /api/v2/spans` with Zipkin's v2 JSON (a list of span objects), Envoy's Zipkin tracer with
  `HTTP_JSON`.
- `DatadogReceiver`: `PUT`/`POST /v0.4/traces` with the Datadog agent's msgpack payload (a list of traces, each a
  list of span maps), Envoy's Datadog tracer; it answers with the agent's `rate_by_service` document.

    with ZipkinReceiver() as zipkin:     # 127.0.0.1:<testlib.free_port()>
        ...point the tracer at zipkin.url ("http://127.0.0.1:<port>/api/v2/spans")...
        spans = zipkin.wait_for_spans(lambda got: len(got) >= 2, timeout=10)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from testlib import free_port


class _Receiver:
    """The shared HTTP server: `decode(path, body)` returns the spans of one request, or None for a wrong path;
    it raises ValueError for a body that is not the expected format (kept in `rejected`, answered 400)."""

    path = ""
    answer = b""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self._changed = threading.Condition()
        self._spans: list[dict[str, Any]] = []
        self.posts = 0
        self.rejected: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self._body()
                try:
                    spans = receiver.decode(self.path, body)
                except ValueError as e:
                    with receiver._changed:
                        receiver.rejected.append(f"{e}: {body[:200]!r}")
                    self._reply(400, b"")
                    return
                if spans is None:
                    self._reply(404, b"")
                    return
                with receiver._changed:
                    receiver.posts += 1
                    receiver._spans.extend(spans)
                    receiver._changed.notify_all()
                self._reply(200 if receiver.answer else 202, receiver.answer)

            do_POST = do_PUT = _handle

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                if body:
                    self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                """Envoy's HTTP client may send the body chunked (no content-length)."""
                if "chunked" not in (self.headers.get("transfer-encoding") or "").lower():
                    return self.rfile.read(int(self.headers.get("content-length") or 0))
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()  # the CRLF after each chunk

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, free_port() if port is None else port), Handler)
        self.port = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    def decode(self, path: str, body: bytes) -> list[dict[str, Any]] | None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spans(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self._spans)

    def wait_for_spans(self, until: Callable[[list[dict[str, Any]]], bool], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = list(self._spans)
                if until(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{type(self).__name__}: condition not met within {timeout:g}s; {len(got)} "
                                       f"spans received: {got[-4:]!r}")
                self._changed.wait(left)


class ZipkinReceiver(_Receiver):
    path = "/api/v2/spans"

    def decode(self, path: str, body: bytes) -> list[dict[str, Any]] | None:
        if path != self.path:
            return None
        spans = json.loads(body)
        if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
            raise ValueError("not a JSON list of span objects")
        return spans


class DatadogReceiver(_Receiver):
    """`url` is the agent's base URL (what `datadog.url` takes); spans arrive flattened from their traces."""

    path = ""
    traces_path = "/v0.4/traces"
    answer = json.dumps({"rate_by_service": {"service:,env:": 1.0}}).encode()

    def decode(self, path: str, body: bytes) -> list[dict[str, Any]] | None:
        if path != self.traces_path:
            return None
        try:
            traces = msgspec.msgpack.decode(body)
        except msgspec.DecodeError as e:
            raise ValueError(f"not msgpack: {e}") from e
        if not isinstance(traces, list) or not all(isinstance(t, list) for t in traces):
            raise ValueError("not a msgpack list of traces")
        return [s for t in traces for s in t if isinstance(s, dict)]
