"""MeshAccessLog through a real mTLS mesh: CP, agents and Envoys on loopback, web-1 → backend-1 (HTTP) and
web-1 → db-1 (TCP).

What a user sees: the log lines of the requests this test sent, in Kuma's default formats, naming the source and
destination services and the status each request got (200, then 503 from a failing backend); the same lines at a
TCP collector the test runs (Envoy → the agent's FIFO → the collector); the same requests as OTLP log records at
an OpenTelemetry collector; and a log path Envoy cannot open reported by `inspect` as the proxy's rejection, with
the proxy still serving on its previous config.
"""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_app import BackendApp
from e2e.test_mesh_routes import NameApp, dataplane
from otlp_receiver import OtlpReceiver
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "db_in", "w_in", "w_out", "w_out_db")}
WEB_OUTBOUND = f"""\
  outbound:
  - port: {PORTS['w_out']}
    tags:
      kuma.io/service: backend
  - port: {PORTS['w_out_db']}
    tags:
      kuma.io/service: db
"""
URL = f"http://127.0.0.1:{PORTS['w_out']}/"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


class LineCollector:
    """A newline-delimited TCP log collector, as a user would run one (e.g. a Logstash tcp input)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn, conn.makefile("r", encoding="utf-8") as f:
            for line in f:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def api(cp):
    """One keep-alive connection for every CP call: the CP's connection guard counts a closed plain-HTTP connection
    as a slot for ~30 s, so ~130 one-shot requests (inspect polling) in a row are refused (see the report)."""
    with httpx.Client(base_url=cp.api, timeout=5) as client:
        yield client


def put(api: httpx.Client, doc: dict[str, Any]) -> None:
    r = api.put(f"/meshes/default/meshaccesslogs/{doc['name']}", json=doc)
    assert r.status_code in (200, 201), r.text


def delete(api: httpx.Client, name: str) -> None:
    assert api.delete(f"/meshes/default/meshaccesslogs/{name}").status_code in (200, 204, 404)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def db_call() -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", PORTS["w_out_db"]), timeout=3) as s:
            s.sendall(b"who")
            return s.recv(100)
    except OSError:
        return b""


@pytest.fixture(scope="module")
def mesh(api, agents, tmp_path_factory):
    app = BackendApp("b1")
    db = NameApp("db-1")
    started = [agents("backend-1", dataplane("backend-1", "backend", PORTS["b_in"], app.port, "http"), wait=False),
               agents("db-1", dataplane("db-1", "db", PORTS["db_in"], db.port, "tcp"), wait=False),
               agents("web-1", dataplane("web-1", "web", PORTS["w_in"], 1, "http", outbound=WEB_OUTBOUND),
                      wait=False)]
    for a in started:
        a.wait_ready(40)
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: c.get(URL).headers.get("x-instance") == "b1", 30, what="web -> backend through the mesh")
    wait_for(lambda: db_call() == b"db-1", 30, what="web -> db through the mesh")
    # Kuma's default MeshRetry would retry the backend's 503s; each request should be one attempt here.
    r = api.put("/meshes/default/meshretries/mal-no-retry", json={
        "type": "MeshRetry", "mesh": "default", "name": "mal-no-retry", "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {"http": {"numRetries": 0}}}]}})
    assert r.status_code in (200, 201), r.text
    yield app, tmp_path_factory.mktemp("logs"), started[2]
    app.close()


def test_file_tcp_and_otel_backends_log_the_requests_sent(mesh, api):
    app, logs, _ = mesh
    out_file, in_file = logs / "web-outbound.log", logs / "backend-inbound.log"
    collector = LineCollector()
    otlp = OtlpReceiver().start()
    try:
        # Kuma's shapes: the caller's outbound (to[]) and the callee's inbound (from[]), default formats.
        put(api, {"type": "MeshAccessLog", "mesh": "default", "name": "web-out", "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "File", "file": {"path": str(out_file)}},
                {"type": "Tcp", "tcp": {"address": collector.address}},
                {"type": "OpenTelemetry", "openTelemetry": {
                    "endpoint": otlp.endpoint, "attributes": [{"key": "mesh", "value": "%KUMA_MESH%"},
                                                              {"key": "dst", "value": "%KUMA_DESTINATION_SERVICE%"}]}},
            ]}}]}})
        put(api, {"type": "MeshAccessLog", "mesh": "default", "name": "backend-in", "spec": {
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "File", "file": {"path": str(in_file), "format": {"type": "Plain", "plain": (
                    "%KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %REQ(USER-AGENT)% "
                    "%RESPONSE_CODE%")}}}]}}]}})
        run = uuid.uuid4().hex[:8]
        with httpx.Client(timeout=3) as client:
            # Config reaches each Envoy asynchronously (web and backend get their own pushes, only the proxies a
            # policy selects are regenerated): send tagged probes until one is logged on both sides.
            wait_for(lambda: client.get(URL, headers={"user-agent": f"probe-{run}"}) and
                     any(f"probe-{run}" in x for x in lines(out_file)) and
                     any(f"probe-{run}" in x for x in lines(in_file)), 15, interval=0.3, what="access logs in force")
            sent = {}
            for i in range(3):
                ua = f"mal-{run}-ok-{i}"
                sent[ua] = client.get(URL, headers={"user-agent": ua}).status_code
            app.set(error_rate=1.0, error_status=503)
            try:
                for i in range(2):
                    ua = f"mal-{run}-fail-{i}"
                    sent[ua] = client.get(URL, headers={"user-agent": ua}).status_code
            finally:
                app.set(error_rate=0.0)
        assert [sent[k] for k in sorted(sent)] == [503, 503, 200, 200, 200], sent
        assert db_call() == b"db-1"

        def mine(found: list[str]) -> dict[str, str]:
            return {ua: line for line in found for ua in sent if f'"{ua}"' in line or f" {ua} " in line}

        got = wait_for(lambda: len(mine(lines(out_file))) == len(sent) and mine(lines(out_file)), 10,
                       what="outbound file log lines")
        for ua, status in sent.items():
            line = got[ua]
            # Kuma's HTTP default: ... %RESPONSE_CODE% ... "%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" ...
            assert '] default "GET / HTTP/1.1" ' + str(status) + " " in line, line
            assert '"web" "backend" "127.0.0.1" "127.0.0.1:' in line, line
        tcp_lines = [x for x in lines(out_file) if "(db) took" in x]
        assert tcp_lines and all(" default 127.0.0.1(web)->127.0.0.1:" in x for x in tcp_lines), tcp_lines
        print("outbound file log:", *lines(out_file)[-3:], sep="\n  ")

        # The collector gets the very same lines (both loggers render the same request), newline-delimited.
        wait_for(lambda: set(mine(collector.snapshot()).values()) == set(got.values()), 10, what="TCP collector")
        assert any("(db) took" in x for x in collector.snapshot())

        inbound = wait_for(lambda: len(mine(lines(in_file))) == len(sent) and mine(lines(in_file)), 10,
                           what="inbound file log lines")
        for ua, status in sent.items():
            assert inbound[ua] == f"INBOUND unknown->backend {ua} {status}", inbound[ua]

        records = otlp.wait_for_log_records(
            lambda rs: len({ua for r in rs for ua in sent if f'"{ua}"' in str(r.body)}) == len(sent), timeout=10)
        for r in records:
            if f"mal-{run}-" in str(r.body):
                assert r.attributes.get("mesh") == "default" and r.attributes.get("dst") == "backend", r.attributes
                assert '"web" "backend"' in r.body
        print(f"OTLP: {len(records)} log records; one body: {records[-1].body[:120]}")
    finally:
        delete(api, "web-out")
        delete(api, "backend-in")
        collector.close()
        otlp.stop()


def test_unopenable_log_path_is_a_rejection_in_inspect_not_a_crash(mesh, api):
    _, logs, web = mesh
    envoys = web.envoy_pids()
    good = logs / "good.log"
    put(api, {"type": "MeshAccessLog", "mesh": "default", "name": "good", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
            {"type": "File", "file": {"path": str(good), "format": {
                "type": "Plain", "plain": "%REQ(USER-AGENT)% %RESPONSE_CODE%"}}}]}}]}})
    bad = logs / "no-such-dir" / "access.log"
    try:
        with httpx.Client(timeout=3) as client:
            wait_for(lambda: client.get(URL, headers={"user-agent": "before"}) and "before 200" in lines(good), 15,
                     interval=0.3, what="first policy in force")

            def lds() -> dict[str, Any]:
                return api.get("/meshes/default/dataplanes/web-1/_inspect").json()["xds"]["types"][LDS]

            def nack() -> str:
                s = lds()
                return (s["nack"] or {}).get("error", "") if s["snapshot_version"] == s["sent_version"] else ""

            # A more specific policy replaces the backends with a path whose directory does not exist.
            put(api, {"type": "MeshAccessLog", "mesh": "default", "name": "bad", "spec": {
                "targetRef": {"kind": "MeshService", "name": "web"},
                "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"backends": [
                    {"type": "File", "file": {"path": str(bad)}}]}}]}})
            error = wait_for(nack, 15, what="Envoy's rejection of the listener in inspect")
            print("inspect shows the LDS NACK:", error)
            assert str(bad) in error and "unable to open file" in error, error
            # Envoy kept its previous listener: requests still pass and are still logged where they were.
            assert client.get(URL, headers={"user-agent": "during"}).status_code == 200
            wait_for(lambda: "during 200" in lines(good), 10, what="old access log still in force")
            assert not bad.parent.exists()
            assert web.proc.poll() is None and web.envoy_pids() == envoys  # no crash, no Envoy restart
            delete(api, "bad")

            def in_sync() -> bool:
                s = lds()
                return s["acked_version"] == s["snapshot_version"] != s["nack"]["version"]

            # inspect keeps the NACK as history; the proxy is current again once it ACKs the snapshot's version.
            wait_for(in_sync, 15, what="the proxy ACKs the config without the bad policy")
            assert client.get(URL, headers={"user-agent": "after"}).status_code == 200
            wait_for(lambda: "after 200" in lines(good), 10, what="logging after recovery")
    finally:
        delete(api, "bad")
        delete(api, "good")
