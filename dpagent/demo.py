"""`dpagent demo`: a local control plane, two demo services and their agents, to see the mesh work in a minute.

Everything runs on 127.0.0.1 with the same code paths as production (real CP, tokens, mTLS, real Envoys).
It stays up until Ctrl-C and then stops everything in order (agents drain first, the CP last).
The terminal gets one line per step; each process logs to its own file in the demo directory, and a step that
fails prints the tail of the log that explains it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from dpagent.errors import ConfigError, ControlPlaneRejected, EnvoyError

DATAPLANE = """\
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: {inbound}
    servicePort: {app}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
{outbound}"""


DENY = """\
type: MeshTrafficPermission
mesh: default
name: deny-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""


def serve_app(name: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = f"hello from {name} (path {self.path})\n".encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@dataclass
class _Proc:
    """A demo process and the file its output goes to (so the terminal stays readable)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _start(name: str, argv: list[str], log: Path, env: dict[str, str]) -> _Proc:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return _Proc(name, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env), log)


def _tail(proc: _Proc, lines: int = 20) -> str:
    try:
        text = proc.log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {proc.log})"
    return f"---- last {len(text)} lines of {proc.log} ----\n" + "\n".join(text)


def _wait(what: str, check: Any, timeout: float, procs: list[_Proc]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise EnvoyError(f"{what}: {p.name} exited early (code {p.popen.returncode})\n{_tail(p)}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    logs = "\n".join(_tail(p, 10) for p in procs)
    raise EnvoyError(f"{what} did not happen within {timeout:.0f}s\n{logs}")


def run_demo(base_port: int = 20000, api_port: int = 5681, dp_port: int = 5678, xds_port: int = 5679,
             seconds: float = 0) -> int:
    work = Path(tempfile.mkdtemp(prefix="dpagent-demo-"))
    data = work / "cp"
    exe = [sys.executable, "-m", "dpagent"]
    api = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    procs: list[_Proc] = []
    apps = []
    p = {"backend_app": base_port + 11, "web_app": base_port + 12, "backend_in": base_port + 1,
         "web_in": base_port + 2, "web_out": base_port + 3}
    try:
        try:
            apps = [serve_app("backend", p["backend_app"]), serve_app("web", p["web_app"])]
        except OSError as e:
            raise ConfigError(f"demo ports {base_port + 11}-{base_port + 12} are busy ({e.strerror}); "
                              "pass --base-port to move the demo") from None
        print(f"==> starting the control plane (logs and data in {work})", flush=True)
        procs.append(_start("control plane", [*exe, "cp", "run", "--data-dir", str(data), "--bind-address",
                                              "127.0.0.1", "--api-port", str(api_port), "--dp-server-port",
                                              str(dp_port), "--xds-port", str(xds_port)], work / "cp.log", env))
        _wait("control plane start", lambda: httpx.get(api, timeout=1).status_code == 200, 30, procs)
        agents = [
            ("backend-1", "backend", p["backend_in"], p["backend_app"], "", base_port + 21),
            ("web-1", "web", p["web_in"], p["web_app"],
             f"  outbound:\n  - port: {p['web_out']}\n    tags:\n      kuma.io/service: backend\n", base_port + 22),
        ]
        for name, service, inbound, app, outbound, readiness in agents:
            token = subprocess.run([*exe, "token", "generate", "--name", name, "--tag",
                                    f"kuma.io/service={service}", "--valid-for", "24h", "--api-address", api],
                                   capture_output=True, text=True, env=env)
            if token.returncode != 0:
                raise ControlPlaneRejected(f"generating the token of {name} failed (exit {token.returncode}): "
                                           f"{token.stderr.strip() or token.stdout.strip()}\n{_tail(procs[0], 10)}")
            tok = work / f"{name}.token"
            tok.write_text(token.stdout.strip())
            tok.chmod(0o600)
            dp = work / f"{name}.yaml"
            dp.write_text(DATAPLANE.format(name=name, inbound=inbound, app=app, service=service, outbound=outbound))
            print(f"==> starting agent {name} (Dataplane {dp.name}, log {name}.log)", flush=True)
            procs.append(_start(f"agent {name}", [*exe, "run", "--cp-address", f"https://127.0.0.1:{dp_port}",
                                                  "--ca-cert-file", str(data / "ca.pem"), "--dataplane-file", str(dp),
                                                  "--dataplane-token-file", str(tok), "--readiness-port",
                                                  str(readiness), "--envoy-log-level", "warning", "--drain-time",
                                                  "2s"], work / f"{name}.log", env))
        print("==> waiting for both Envoys to be ready", flush=True)
        for _, _, _, _, _, readiness in agents:
            _wait("agent readiness", lambda r=readiness: httpx.get(f"http://127.0.0.1:{r}/ready",
                                                                   timeout=1).status_code == 200, 60, procs)
        url = f"http://127.0.0.1:{p['web_out']}/"
        print("==> checking web -> backend over mTLS", flush=True)
        _wait("mTLS traffic web -> backend", lambda: httpx.get(url, timeout=2).status_code == 200, 30, procs)
        answer = httpx.get(url, timeout=2).text.strip()
        deny = work / "deny-web.yaml"
        deny.write_text(DENY)
        print(f"""
==> the mesh is up. web-1's outbound {url} reaches backend over mTLS:
      $ curl {url}
      {answer}

    Watch it in the browser (dataplanes, policies, who may call whom, certificates):
      {api}/gui

    See why it works (ACKed config, certificate, matched policies):
      $ .venv/bin/dpagent inspect dataplane web-1 --api-address {api}
      $ .venv/bin/dpagent get dataplanes --api-address {api}

    Deny web -> backend and watch curl turn into 403 within a second, then allow it again:
      $ .venv/bin/dpagent apply -f {deny} --api-address {api}
      $ .venv/bin/dpagent delete mtp deny-web --api-address {api}

    Logs: {work}/cp.log, backend-1.log, web-1.log
    Press Ctrl-C to stop (agents drain, then the control plane stops).
""", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait(seconds or None)
        print("==> stopping: agents drain first, then the control plane", flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(15)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
        for app_server in apps:
            app_server.shutdown()
