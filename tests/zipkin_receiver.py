"""A Zipkin collector for tests: `POST /api/v2/spans` with Zipkin's v2 JSON (a list of span objects), as Envoy's
Zipkin tracer sends it with `HTTP_JSON`; every span is kept for assertions.

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

from testlib import free_port

PATH = "/api/v2/spans"


class ZipkinReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self._changed = threading.Condition()
        self._spans: list[dict[str, Any]] = []
        self.posts = 0
        self.rejected: list[str] = []  # bodies that were not a JSON list of spans
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._body()
                if self.path != PATH:
                    self.send_response(404)
                    self.end_headers()
                    return
                try:
                    spans = json.loads(body)
                    if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
                        raise ValueError("not a list of span objects")
                except ValueError:
                    with receiver._changed:
                        receiver.rejected.append(body[:200].decode(errors="replace"))
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._changed:
                    receiver.posts += 1
                    receiver._spans.extend(spans)
                    receiver._changed.notify_all()
                self.send_response(202)  # what a Zipkin server answers
                self.end_headers()

            def _body(self) -> bytes:
                """Envoy's HTTP client sends the spans chunked (no content-length)."""
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
        self._thread = threading.Thread(target=self._server.serve_forever, name="zipkin-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    def start(self) -> ZipkinReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ZipkinReceiver:
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
                    raise TimeoutError(f"Zipkin receiver: condition not met within {timeout:g}s; {len(got)} spans "
                                       f"received: {got[-4:]!r}")
                self._changed.wait(left)
