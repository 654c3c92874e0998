"""Helpers shared by tests and bench scripts: free ports, throwaway certificates, polling, a fake bootstrap server."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DATAPLANE_TEMPLATE = """\
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


def mesh_dataplane(*args: Any, **kwargs: Any) -> str:
    """Kept for e2e modules written before `e2e.meshlib` (imported late: meshlib imports this module)."""
    from e2e.meshlib import dataplane

    return dataplane(*args, **kwargs)


def deny_web(target: str = "backend") -> str:
    """Kept for e2e modules written before `e2e.meshlib`."""
    from e2e.meshlib import deny_web

    return deny_web(target)


class LocalControlPlane:
    """Addresses and command line of a `dpagent cp run` on loopback with its own data dir and free ports.

    Shared by the e2e fixtures and the bench scripts; each decides how to run and stop the process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dp_port, self.xds_port, self.api_port = free_port(), free_port(), free_port()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.dp_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    def command(self, python: str, *extra: str) -> list[str]:
        return [python, "-m", "dpagent", "cp", "run", "--data-dir", str(self.data_dir), "--bind-address", "127.0.0.1",
                "--dp-server-port", str(self.dp_port), "--xds-port", str(self.xds_port), "--api-port",
                str(self.api_port), *extra]


_HANDED_OUT: set[int] = set()


def _below_ephemeral() -> tuple[int, int]:
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        start = 32768
    return max(1024, start - 12000), start


def free_port() -> int:
    """A port that is free now and stays ours: many tests pick ports at import time and bind them much later.

    Ports the kernel hands out for port 0 (servers, client source ports) come from the ephemeral range, so a port
    picked there can be taken by a test app or a client connection before the agent binds it (seen: an Envoy
    inbound refused with "Address already in use"). Picking below that range, and never the same port twice in a
    run, leaves only other programs on the host to collide with.
    """
    lo, hi = _below_ephemeral()
    for _ in range(500):
        port = random.randrange(lo, hi)
        if port in _HANDED_OUT:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # a host with that whole range busy: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 15) -> None:
    """SIGTERM (the graceful path under test), then SIGKILL if it does not exit within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # polled conditions may raise until ready
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca_and_server_cert(hosts: list[str]) -> dict[str, bytes]:
    """A CA and a server certificate for `hosts` (names and IPs), for the test control plane's TLS."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"ca": ca.public_bytes(serialization.Encoding.PEM), "cert": cert.public_bytes(serialization.Encoding.PEM),
            "key": _pem_key(key)}


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
        self.requests: list[dict[str, Any]] = []  # bodies of POST /bootstrap
        self.paths: list[str] = []  # every POST path, in order
        self.script: list[tuple[int, str]] = []
        self.listener_ports: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.paths.append(self.path)
                if self.path != "/bootstrap":
                    return self._send(404, "404: Page Not Found")
                outer.requests.append(body)
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


# What an HttpApp answers a GET with, from its path and request headers: the body and its content type (or None).
Answer = Callable[[str, dict[str, str]], tuple[bytes, str | None]]


class HttpApp:
    """The workload: answers every GET with 200 and `answer(path, headers)`, by default its name and the path."""

    def __init__(self, name: str, answer: Answer | None = None, *, nodelay: bool = False) -> None:
        reply: Answer = answer or (lambda path, _: (f"{name} {path}".encode(), None))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = nodelay

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body, content_type = reply(self.path, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                if content_type:
                    self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class TcpApp:
    """A TCP server on 127.0.0.1 that hands every accepted connection to `handle`, in a thread of its own when
    `threaded` (a connection that stays open must not hold up the next one)."""

    backlog = 16
    threaded = True

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(self.backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.threaded:
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
            else:
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class EchoApp(TcpApp):
    """A TCP echo server, for tcp_proxy paths; it never closes a connection itself."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:  # the peer (a proxy) reset the connection: nothing left to echo
                pass


# ---- a control plane process for front-door tests ----------------------------------------------------------------

# Tight front-door limits so the tests can reach them quickly.
MAX_CONNECTIONS = 40
READ_TIMEOUT = 1.5


class RunningCp(LocalControlPlane):
    """`dpagent cp run` with small front-door limits, its log in a file next to the data dir."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.log = data_dir.parent / "cp.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.command(sys.executable, "--dp-server-max-connections", str(MAX_CONNECTIONS),
                             "--dp-server-read-timeout", f"{READ_TIMEOUT}s", "--max-token-validity", "8760h"),
                stdout=logf, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 30, what="control plane API")

    def stop(self) -> None:
        terminate(self.proc)

    def dp_client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca_file)),
                            timeout=10, trust_env=False, **kw)  # type: ignore[arg-type]

    def token(self, name: str, mesh: str = "default", **extra: object) -> str:
        r = httpx.post(f"{self.api}/tokens/dataplane", json={"name": name, "mesh": mesh, "validFor": "1h", **extra})
        assert r.status_code == 200, r.text
        return r.text

    def dataplane(self, name: str, mesh: str = "default") -> None:
        doc = {"type": "Dataplane", "mesh": mesh, "name": name, "networking": {
            "address": "127.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": name}}]}}
        r = httpx.put(f"{self.api}/meshes/{mesh}/dataplanes/{name}", json=doc)
        assert r.status_code in (200, 201), r.text

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


PY = sys.executable


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}


class ControlPlaneProc(LocalControlPlane):
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir)
        self.env = env or {}  # e.g. KUMA_STORE_* for a CP on PostgreSQL
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / "cp.log"

    def start(self) -> None:
        logf = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(PY, "--token-recheck-interval", "1s", "--deregistration-delay", "1s"),
            stdout=logf, stderr=subprocess.STDOUT, text=True, env={**clean_env(), **self.env})
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 20, what="control plane API")

    def stop(self) -> None:
        terminate(self.proc)

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([PY, "-m", "dpagent", *args, "--api-address", self.api], input=input,
                             capture_output=True, text=True, env=clean_env(), timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"dpagent {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out

    def token(self, name: str, *extra: str, mesh: str = "default", valid_for: str = "1h") -> str:
        return self.cli("token", "generate", "--name", name, "--mesh", mesh, "--valid-for", valid_for,
                        *extra).stdout.strip()

    def inspect(self, name: str, mesh: str = "default") -> dict[str, Any]:
        return httpx.get(f"{self.api}/meshes/{mesh}/dataplanes/{name}/_inspect", timeout=5).json()


class TickClock:
    """Deterministic time for stores under test: each reading is one second after the previous one."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now
