"""A small HTTPS bootstrap server and an agent launcher, so agent tests run the real Envoy without a real CP."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from testlib import free_port, make_ca_and_server_cert, wait_for

DATAPLANE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
  - port: {{ port }}
    servicePort: 9
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
"""


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def envoy_bootstrap(workdir: str, listener_port: int) -> dict[str, Any]:
    """Admin on a UDS in the agent's work dir and one static listener whose /healthz shows the drain state."""
    hcm = {
        "@type": HCM_TYPE,
        "statPrefix": "probe",
        "routeConfig": {"virtualHosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "directResponse": {"status": 200, "body": {"inlineString": "hello"}}}]}]},
        "httpFilters": [
            {"name": "envoy.filters.http.health_check", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                "passThroughMode": False, "headers": [{"name": ":path", "stringMatch": {"exact": "/healthz"}}]}},
            {"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "node": {"id": "default.test", "cluster": "web"},
        "admin": {"address": {"pipe": {"path": f"{workdir}/envoy-admin.sock", "mode": 384}}},
        "staticResources": {"listeners": [{
            "name": "probe",
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": listener_port}},
            "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                           "typedConfig": hcm}]}],
        }]},
    }


class BootstrapServer:
    """Answers POST /bootstrap like a control plane; `script` lists (status, body) answers to give first."""

    def __init__(self, tmp: Path) -> None:
        self.certs = make_ca_and_server_cert(["localhost", "127.0.0.1"])
        self.ca_file = tmp / "cp-ca.pem"
        self.ca_file.write_bytes(self.certs["ca"])
        (tmp / "cp-cert.pem").write_bytes(self.certs["cert"])
        (tmp / "cp-key.pem").write_bytes(self.certs["key"])
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, str]] = []
        self.listener_ports: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(body)
                if self.path != "/bootstrap":
                    return self._send(404, "404: Page Not Found")
                if outer.script:
                    return self._send(*outer.script.pop(0))
                port = outer.listener_ports.setdefault(body["name"], free_port())
                boot = yaml.safe_dump(envoy_bootstrap(body["workdir"], port))
                self._send(200, json.dumps({"bootstrap": base64.b64encode(boot.encode()).decode(),
                                            "kumaSidecarConfiguration": {}}))

            def _send(self, code: int, text: str) -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "cp-cert.pem", tmp / "cp-key.pem")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[BootstrapServer]:
    server = BootstrapServer(tmp_path)
    yield server
    server.close()


class AgentProc:
    def __init__(self, proc: subprocess.Popen[str], readiness_port: int, work_dir: Path | None) -> None:
        self.proc = proc
        self.readiness_port = readiness_port
        self.work_dir = work_dir

    def ready(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2)

    def wait_ready(self, timeout: float = 15) -> None:
        wait_for(lambda: self.proc.poll() is None and self.ready().status_code == 200, timeout, what="agent ready")

    def envoy_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "envoy"]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def launch(tmp_path: Path, cp: BootstrapServer) -> Iterator[Any]:
    procs: list[AgentProc] = []

    def start(name: str = "web-1", *extra: str, readiness_port: int | None = None, template: str = DATAPLANE,
              env: dict[str, str] | None = None, ca: bool = True) -> AgentProc:
        rport = readiness_port or free_port()
        dp_file = tmp_path / f"{name}.yaml"
        dp_file.write_text(template)
        token = tmp_path / f"{name}.token"
        token.write_text("test-token\n")
        args = [sys.executable, "-m", "dpagent", "run", "--cp-address", cp.url, "--dataplane-file", str(dp_file),
                "-v", f"name={name}", "-v", f"port={free_port()}", "--dataplane-token-file", str(token),
                "--readiness-port", str(rport), "--drain-time", "2s", "--envoy-log-level", "warning", *extra]
        if ca:
            args += ["--ca-cert-file", str(cp.ca_file)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
        full_env.update(env or {})
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        agent = AgentProc(proc, rport, None)
        procs.append(agent)
        return agent

    yield start
    for a in procs:
        for pid in a.envoy_pids():
            psutil.Process(pid).kill()
        if a.proc.poll() is None:
            a.proc.kill()
        a.proc.communicate()
