"""Latency and throughput of the dpagent mesh path beside a hand-written minimal Envoy mTLS pair and no proxy at all.

Why: the generated config must not cost more than the least Envoy config that does the same job (mTLS both ways,
HTTP routing), so the rows differ only in what the control plane emits. Three rows, in one run, same Envoy binary,
`--concurrency 1` everywhere, same app:

  direct   client → app
  minimal  client → Envoy A (HCM, mTLS client cluster) → Envoy B (mTLS, client cert required, HCM) → app
  mesh     client → web's outbound listener → backend's inbound (CP-generated: mTLS, allow-all MTP RBAC) → app

Latency: an open-loop client in its own process sends at a fixed rate over a few keep-alive connections and
measures from the *scheduled* send time (coordinated omission counts against the proxy, not hidden). Throughput:
`wrk -t1 -c8` (closed loop). Within each round, minimal and mesh alternate (latency in 0.25 s slices, wrk in 2 s
chunks) so outside load on a shared machine hits both alike; the table shows the median of rounds and each verdict
the median of per-round mesh/minimal ratios. Also shown: the two Envoys' CPU time per request under wrk, the
steadiest signal on a noisy host, and the data-path part of each Envoy's config_dump.
Targets: mesh/minimal p50 and p99 ≤ 1.05, throughput mesh/minimal ≥ 0.95.

With --route a fourth row, `mesh+route`, goes through a second client proxy (service `web-route`) whose calls to
`backend` carry a MeshHTTPRoute (several rules; the one the load hits rewrites a request header, adds a response
header and sends to the service; top-level targetRef `web-route`, so the `mesh` row stays route-free). The two mesh
rows are measured interleaved in every round, and the route verdict (issue 11: p50/p99 within 5 % of the
route-free mesh) is the median of per-round mesh+route/mesh ratios.

Usage: python bench/dataplane_latency.py [--rate 500] [--seconds 20] [--rounds 3] [--dump-config DIR] [--route]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _mesh import PY, AgentProc, ControlPlane, CpuMeter, Procs, admin_get, interrupt_safe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from testlib import free_port, wait_for

from dpagent.agent.envoy import find_envoy

SCRIPT = str(Path(__file__).resolve())
BODY = b"x" * 128
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
REQUEST = b"GET /bench HTTP/1.1\r\nhost: backend\r\n\r\n"
T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typedConfig": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
TLS = "envoy.transport_sockets.tls"
P50_TARGET, P99_TARGET, TPUT_TARGET = 1.05, 1.05, 0.95
WRK_HINT = "wrk is needed for the throughput column: install it with `sudo apt-get install wrk` (Debian/Ubuntu), " \
           "or run with --skip-throughput"


# ── the app: a separate process, so the client's load never shares its event loop ─────────────────────────────

class _AppProtocol(asyncio.Protocol):
    """Answers every complete request head with the same bytes; GETs carry no body, so counting heads is enough."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(RESPONSE * n)
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]


def run_app(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_AppProtocol, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ── the open-loop load generator: a separate process, select() for µs timer resolution ─────────────────────────

def _lower_timer_slack() -> None:
    """Linux pads sleeps by 50 µs by default; 1 µs keeps the send times on the schedule."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK


class _Conn:
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    _CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = self._connect()
        self.buf = bytearray()
        self.need = -1
        self.ok = False
        self.scheduled = self.sent = 0.0
        self.measured = False

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        return s

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect()
        self.buf.clear()
        self.need = -1

    def send(self, scheduled: float, measured: bool) -> None:
        self.scheduled, self.measured = scheduled, measured
        self.sent = time.perf_counter()
        self.sock.send(REQUEST)  # 40 bytes into an empty socket buffer: never partial

    def feed(self, data: bytes) -> bool:
        """True once the whole response is in (status line, headers, content-length body)."""
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).lower()
            m = self._CL.search(head)
            self.ok = head.startswith(b"http/1.1 200")
            self.need = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) < self.need:
            return False
        del self.buf[:self.need]
        self.need = -1
        return True


def run_load(ports: list[int], rate: float, seconds: float, warmup: float, conns: int,
             slice_s: float) -> list[dict[str, Any]]:
    """Send request i at start + i/rate and time it from that moment (queued while every connection is busy).

    With several targets, time is cut into `slice_s` slices that go round-robin to the targets, each with its own
    connection pool: a burst of outside load on this shared machine then hits every target alike instead of
    whichever row happened to be running. Each target gets `seconds` of measured time at `rate`.
    """
    _lower_timer_slack()
    pools = [[_Conn(p) for _ in range(conns)] for p in ports]
    idle: list[deque[_Conn]] = [deque(pool) for pool in pools]
    busy: dict[socket.socket, tuple[int, _Conn]] = {}
    n = len(ports)
    interval = 1.0 / rate
    n_warm, n_total = round(warmup * n * rate), round((warmup + seconds) * n * rate)
    per_slice = max(1, round(slice_s * rate))
    latency = [array("d") for _ in ports]
    service = [array("d") for _ in ports]
    lag = [array("d") for _ in ports]
    errors = [0] * n
    start = time.perf_counter() + 0.05
    window_start = start + n_warm * interval
    last_done = window_start
    i = 0
    hard_stop = start + (warmup + seconds) * n + 10.0

    def target(k: int) -> int:
        return (k // per_slice) % n

    while True:
        now = time.perf_counter()
        while i < n_total and start + i * interval <= now and idle[t := target(i)]:
            c = idle[t].popleft()
            try:
                c.send(start + i * interval, i >= n_warm)
            except OSError:
                errors[t] += 1
                c.reconnect()
                idle[t].append(c)
                continue
            busy[c.sock] = (t, c)
            i += 1
        if i >= n_total and not busy:
            break
        if now > hard_stop:
            for t, _ in busy.values():
                errors[t] += 1
            break
        timeout = start + i * interval - now if (i < n_total and idle[target(i)]) else 1.0
        readable, _, _ = select.select(list(busy), [], [], max(0.0, timeout))
        done_at = time.perf_counter()
        for s in readable:
            t, c = busy[s]
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                errors[t] += 1
                del busy[s]
                c.reconnect()
                idle[t].append(c)
                continue
            if not c.feed(data):
                continue
            del busy[s]
            idle[t].append(c)
            if not c.measured:
                continue
            if not c.ok:
                errors[t] += 1
                continue
            latency[t].append(done_at - c.scheduled)
            service[t].append(done_at - c.sent)
            lag[t].append(c.sent - c.scheduled)
            last_done = done_at
    for pool in pools:
        for c in pool:
            c.sock.close()
    # Rate while a target had the schedule, capped by the overall pace (a client that fell behind ends late).
    overall = sum(len(x) for x in latency) / max(1e-9, last_done - window_start)
    scheduled = [0] * n
    for k in range(n_warm, n_total):
        scheduled[target(k)] += 1
    return [{"latency": _pcts(latency[t]), "service": _pcts(service[t]), "send_lag": _pcts(lag[t]),
             "count": len(latency[t]), "errors": errors[t], "target": rate,
             "achieved": min(len(latency[t]) / max(1, scheduled[t]) * rate, overall)} for t in range(n)]


def _pcts(values: array) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1] * 1000}


# ── certificates and the hand-written Envoy pair ───────────────────────────────────────────────────────────────

def _pem(obj: Any) -> str:
    if isinstance(obj, ec.EllipticCurvePrivateKey):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return obj.public_bytes(serialization.Encoding.PEM).decode()


def make_identities() -> dict[str, str]:
    """A P-256 root and two SPIFFE leaves, like the builtin mesh CA issues (same curve, same SAN shape)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench mesh CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": _pem(ca)}
    for service in ("web", "backend"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=2))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://default/{service}")]), critical=True)
                .sign(ca_key, hashes.SHA256()))
        out[f"{service}_cert"], out[f"{service}_key"] = _pem(cert), _pem(key)
    return out


def _addr(port: int) -> dict[str, Any]:
    return {"socketAddress": {"address": "127.0.0.1", "portValue": port}}


def _hcm_listener(name: str, port: int, cluster: str, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    hcm = {"@type": HCM, "statPrefix": name, "httpFilters": [ROUTER], "routeConfig": {"virtualHosts": [
        {"name": cluster, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typedConfig": hcm}]}
    if tls:
        chain["transportSocket"] = {"name": TLS, "typedConfig": tls}
    return {"name": name, "address": _addr(port), "filterChains": [chain]}


def _cluster(name: str, port: int, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "type": "STATIC", "connectTimeout": "5s", "loadAssignment": {
        "clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {"address": _addr(port)}}]}]}}
    if tls:
        c["transportSocket"] = {"name": TLS, "typedConfig": tls}
    return c


def _common_tls(ids: dict[str, str], me: str, san: dict[str, str]) -> dict[str, Any]:
    return {"tlsCertificates": [{"certificateChain": {"inlineString": ids[f"{me}_cert"]},
                                 "privateKey": {"inlineString": ids[f"{me}_key"]}}],
            "validationContext": {"trustedCa": {"inlineString": ids["ca"]},
                                  "matchTypedSubjectAltNames": [{"sanType": "URI", "matcher": san}]}}


def minimal_bootstraps(ids: dict[str, str], tmp: Path, a_port: int, b_port: int,
                       app_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The least config doing the mesh's job: A verifies B is `backend`, B requires a cert from the mesh CA."""
    upstream = {"@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "commonTlsContext": _common_tls(ids, "web", {"exact": "spiffe://default/backend"})}
    downstream = {"@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                  "requireClientCertificate": True,
                  "commonTlsContext": _common_tls(ids, "backend", {"prefix": "spiffe://default/"})}
    a = {"node": {"id": "minimal-a", "cluster": "web"},
         "admin": {"address": {"pipe": {"path": str(tmp / "minimal-a.sock")}}},
         "staticResources": {"listeners": [_hcm_listener("out", a_port, "backend")],
                             "clusters": [_cluster("backend", b_port, upstream)]}}
    b = {"node": {"id": "minimal-b", "cluster": "backend"},
         "admin": {"address": {"pipe": {"path": str(tmp / "minimal-b.sock")}}},
         "staticResources": {"listeners": [_hcm_listener("in", b_port, "app", downstream)],
                             "clusters": [_cluster("app", app_port)]}}
    return a, b


def envoy_cmd(bootstrap: Path) -> list[str]:
    """The flags the agent passes (dpagent.agent.envoy.envoy_args) with --concurrency 1."""
    return [find_envoy(), "--config-path", str(bootstrap), "--drain-time-s", "1", "--drain-strategy", "immediate",
            "--disable-hot-restart", "--log-level", "warning", "--concurrency", "1"]


def dataplane(name: str, service: str, port: int, service_port: int, outbound_port: int = 0) -> str:
    out = (f"  outbound:\n  - port: {outbound_port}\n    tags:\n      kuma.io/service: backend\n"
           if outbound_port else "")
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {port}\n    servicePort: {service_port}\n    tags:\n      kuma.io/service: {service}\n"
            f"      kuma.io/protocol: http\n{out}")


# ── measuring ──────────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Row:
    """One path under test; `envoys` are its proxies' pids, for CPU per request."""

    name: str
    port: int
    envoys: list[int] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def get_ok(port: int) -> bool:
    """One request on a fresh keep-alive connection; True on a 200."""
    c = _Conn(port)
    try:
        c.sock.setblocking(True)
        c.sock.settimeout(2)
        c.sock.sendall(REQUEST)
        while data := c.sock.recv(65536):
            if c.feed(data):
                return c.ok
        return False
    finally:
        c.sock.close()


def measure_latency(procs: Procs, rows: list[Row], args: argparse.Namespace) -> None:
    """One load-generator process over the rows' ports (interleaved in slices); appends a round to each row."""
    meter = CpuMeter()
    proc = procs.spawn([PY, SCRIPT, "--role", "load", "--ports", ",".join(str(r.port) for r in rows),
                        "--rate", str(args.rate), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                        "--conns", str(args.conns), "--slice", str(args.slice)], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=(args.seconds + args.warmup) * len(rows) + 60)
    procs.forget(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    others = meter.foreign_cores()
    for row, res in zip(rows, json.loads(out), strict=True):
        res["others"] = others
        row.rounds.append(res)
        lat = res["latency"]
        print(f"  {row.name:<8} latency p50 {lat['p50']:6.3f}  p90 {lat['p90']:6.3f}  p99 {lat['p99']:7.3f} ms  "
              f"rate {res['achieved']:6.1f}/s  errors {res['errors']}  (other processes: {others:.2f} cores)",
              flush=True)


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def measure_throughput(procs: Procs, row: Row, args: argparse.Namespace) -> None:
    """One closed-loop chunk, wrk -t1 -c<conns>, added to the row's last round: requests, seconds, Envoy CPU."""
    meter = CpuMeter()
    cpu0 = _cpu(row.envoys)
    proc = procs.spawn(["wrk", "-t1", f"-c{args.conns}", f"-d{args.tput_seconds}s",
                        f"http://127.0.0.1:{row.port}/bench"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=args.tput_seconds + 30)
    procs.forget(proc)
    cpu = _cpu(row.envoys) - cpu0
    text = out.decode()
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", text)
    if not m or "Non-2xx" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk failed or saw errors:\n{text}")
    secs = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    r = row.rounds[-1]
    r["tput_requests"] = r.get("tput_requests", 0) + int(m.group(1))
    r["tput_seconds"] = r.get("tput_seconds", 0.0) + secs
    r["envoy_cpu"] = r.get("envoy_cpu", 0.0) + cpu
    r["tput"] = r["tput_requests"] / r["tput_seconds"]
    r["us_per_req"] = r["envoy_cpu"] / r["tput_requests"] * 1e6 if row.envoys else float("nan")
    per_req = f"proxies' CPU {cpu / max(1, int(m.group(1))) * 1e6:6.1f} µs/req  " if row.envoys else ""
    print(f"  {row.name:<8} throughput {int(m.group(1)) / secs:8.0f} req/s  {per_req}"
          f"(other processes: {meter.foreign_cores():.2f} cores)", flush=True)


def throughput_chunks(procs: Procs, rows: list[Row], args: argparse.Namespace) -> None:
    """Alternate short wrk runs between the rows, so slow phases of the shared machine hit each row alike."""
    for k in range(args.tput_chunks):
        for row in rows if k % 2 == 0 else rows[::-1]:
            if args.skip_throughput:
                row.rounds[-1].update(tput=float("nan"), us_per_req=float("nan"))
            else:
                measure_throughput(procs, row, args)


def med(row: Row, *path: str) -> float:
    vals = []
    for r in row.rounds:
        v: Any = r
        for p in path:
            v = v[p]
        vals.append(float(v))
    return statistics.median(vals)


# ── config comparison ──────────────────────────────────────────────────────────────────────────────────────────

def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def summarize(dump: dict[str, Any], listener: str, cluster: str) -> list[str]:
    """The data-path knobs of one listener and one cluster: filters, extra HCM fields, TLS, protocol options."""
    lines: list[str] = []
    for cfg in dump.get("configs", []):
        listeners = [x.get("listener") for x in cfg.get("static_listeners", [])]
        listeners += [x.get("active_state", {}).get("listener") for x in cfg.get("dynamic_listeners", [])]
        for lst in filter(None, listeners):
            if lst["name"] != listener:
                continue
            for chain in lst.get("filter_chains", []):
                for f in chain.get("filters", []):
                    tc = f.get("typed_config", {})
                    extra = sorted(set(tc) - {"@type", "stat_prefix", "route_config", "http_filters", "codec_type"})
                    hf = [h["name"].rsplit(".", 1)[-1] for h in tc.get("http_filters", [])]
                    rbac = [json.dumps(h.get("typed_config", {}).get("rules", {}), sort_keys=True)
                            for h in tc.get("http_filters", []) if h["name"].endswith(".rbac")]
                    lines.append(f"listener {lst['name']}: {f['name'].rsplit('.', 1)[-1]} http_filters={hf} "
                                 f"extra_hcm_fields={extra} tls={'transport_socket' in chain}"
                                 + (f" rbac_rules={rbac}" if rbac else ""))
            extra_l = sorted(set(lst) - {"@type", "name", "address", "filter_chains", "traffic_direction"})
            if extra_l:
                lines.append(f"listener {lst['name']}: extra fields {extra_l}")
        clusters = [x.get("cluster") for x in cfg.get("static_clusters", [])]
        clusters += [x.get("cluster") for x in cfg.get("dynamic_active_clusters", [])]
        for c in filter(None, clusters):
            if c["name"] != cluster:
                continue
            proto = [_short(v.get("@type", "")) + ":" + ",".join(sorted(v.get("explicit_http_config", {})))
                     for v in c.get("typed_extension_protocol_options", {}).values()]
            extra = sorted(set(c) - {"@type", "name", "type", "connect_timeout", "load_assignment",
                                     "eds_cluster_config", "transport_socket", "typed_extension_protocol_options"})
            lines.append(f"cluster {c['name']}: type={c.get('type')} protocol_options={proto or ['http1 (default)']} "
                         f"tls={'transport_socket' in c} extra_fields={extra}")
    return lines


def compare_configs(sockets: dict[str, tuple[Path, str, str]], dump_dir: Path | None) -> None:
    print("\ndata-path config (from each Envoy's /config_dump):")
    for label, (sock, listener, cluster) in sockets.items():
        dump = admin_get(sock, "/config_dump?include_eds").json()
        if dump_dir:
            dump_dir.mkdir(parents=True, exist_ok=True)
            (dump_dir / f"{label.replace(' ', '_')}.json").write_text(json.dumps(dump, indent=1))
        for line in summarize(dump, listener, cluster):
            print(f"  {label:<13} {line}")
    if dump_dir:
        print(f"  full dumps written to {dump_dir}")


# ── main ───────────────────────────────────────────────────────────────────────────────────────────────────────

def setup(procs: Procs, tmp: Path, args: argparse.Namespace) -> tuple[list[Row], dict[str, tuple[Path, str, str]]]:
    app_port = free_port()
    app = procs.spawn([PY, SCRIPT, "--role", "app", "--port", str(app_port)], tmp / "app.log")
    wait_for(lambda: app.poll() is None and get_ok(app_port), 10, what="app")

    ids = make_identities()
    minimal_pids: list[int] = []
    a_port, b_port = free_port(), free_port()
    for name, boot in zip(("minimal-a", "minimal-b"), minimal_bootstraps(ids, tmp, a_port, b_port, app_port),
                          strict=True):
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(boot))
        minimal_pids.append(procs.spawn(envoy_cmd(path), tmp / f"{name}.log").pid)

    cp = ControlPlane(procs, tmp)
    cp.start()
    b_in, w_in, w_out = free_port(), free_port(), free_port()
    backend = AgentProc(cp, "backend-1", dataplane("backend-1", "backend", b_in, app_port), "--concurrency", "1")
    web = AgentProc(cp, "web-1", dataplane("web-1", "web", w_in, 1, w_out), "--concurrency", "1")
    backend.wait_ready()
    web.wait_ready()
    wait_for(lambda: get_ok(a_port), 15, what="minimal Envoy pair")
    wait_for(lambda: get_ok(w_out), 30, what="web → backend through the mesh")
    rows = [Row("direct", app_port), Row("minimal", a_port, minimal_pids),
            Row("mesh", w_out, backend.envoy_pids() + web.envoy_pids())]
    if args.route:
        r_in, r_out = free_port(), free_port()
        web_route = AgentProc(cp, "web-route-1", dataplane("web-route-1", "web-route", r_in, 1, r_out),
                              "--concurrency", "1")
        web_route.wait_ready()
        wait_for(lambda: get_ok(r_out), 30, what="web-route → backend through the mesh")
        apply_route(cp, r_out, w_out)
        rows.append(Row("mesh+route", r_out, backend.envoy_pids() + web_route.envoy_pids()))
    sockets = {
        "minimal A": (tmp / "minimal-a.sock", "out", "backend"),
        "minimal B": (tmp / "minimal-b.sock", "in", "app"),
        "mesh web": (web.admin_socket, f"outbound:127.0.0.1:{w_out}", "backend"),
        "mesh backend": (backend.admin_socket, f"inbound:127.0.0.1:{b_in}", f"localhost:{app_port}"),
    }
    if args.route:
        sockets["mesh web-route"] = (web_route.admin_socket, f"outbound:127.0.0.1:{r_out}", "backend")
    return rows, sockets


ROUTE_MARK = "x-bench-route"


def route_policy() -> dict[str, Any]:
    """A realistic route table for `backend`: exact, regex and header rules the load does not hit, then the prefix
    rule it does (header rewrite + response header + the service itself as the backend)."""
    def rule(match: dict[str, Any], **default: Any) -> dict[str, Any]:
        return {"matches": [match], "default": default}

    backend = [{"kind": "MeshService", "name": "backend", "weight": 100}]
    return {"type": "MeshHTTPRoute", "mesh": "default", "name": "bench-route", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web-route"}, "to": [
        {"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            rule({"path": {"type": "Exact", "value": "/health"}}, backendRefs=backend),
            rule({"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}, backendRefs=backend),
            rule({"path": {"type": "PathPrefix", "value": "/"}, "headers": [
                {"type": "Exact", "name": "x-canary", "value": "yes"}]}, backendRefs=backend),
            rule({"path": {"type": "PathPrefix", "value": "/bench"}}, backendRefs=backend, filters=[
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-api", "value": "2"}]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": ROUTE_MARK, "value": "1"}]}}]),
        ]}]}}


def apply_route(cp: ControlPlane, port: int, plain_port: int) -> None:
    import httpx

    r = httpx.put(f"{cp.api}/meshes/default/meshhttproutes/bench-route", json=route_policy(), timeout=10)
    r.raise_for_status()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/bench", timeout=2).headers.get(ROUTE_MARK) == "1", 15,
             what="the MeshHTTPRoute served on web-route's outbound")
    if httpx.get(f"http://127.0.0.1:{plain_port}/bench", timeout=2).headers.get(ROUTE_MARK):
        raise RuntimeError("the route-free mesh row carries the route")


def _get(r: dict[str, Any], path: tuple[str, ...]) -> float:
    v: Any = r
    for p in path:
        v = v[p]
    return float(v)


def report(rows: list[Row], args: argparse.Namespace) -> bool:
    """The table (median of rounds) and the verdicts. A verdict uses the median of per-round mesh/minimal ratios:
    both rows of a round ran interleaved over the same seconds, so a busy phase of the machine cancels out."""
    print(f"\nmedian of rounds (direct: 1 round; minimal, mesh: {args.rounds}); latency from the scheduled send, ms")
    print(f"{'row':<11}{'p50':>8}{'p90':>8}{'p99':>8}{'rate/s':>9}{'target':>8}{'errors':>8}{'max tput/s':>12}"
          f"{'proxy µs/req':>14}")
    for row in rows:
        print(f"{row.name:<11}{med(row, 'latency', 'p50'):8.3f}{med(row, 'latency', 'p90'):8.3f}"
              f"{med(row, 'latency', 'p99'):8.3f}{med(row, 'achieved'):9.1f}{args.rate:8.0f}"
              f"{sum(r['errors'] for r in row.rounds):8d}{med(row, 'tput'):12.0f}{med(row, 'us_per_req'):14.1f}")
    minimal, mesh = rows[1], rows[2]
    checks: list[tuple[str, tuple[str, ...], str, float | None]] = [
        ("p50 latency", ("latency", "p50"), "<=", P50_TARGET),
        ("p99 latency", ("latency", "p99"), "<=", P99_TARGET),
        ("p90 latency", ("latency", "p90"), "", None),
        ("throughput", ("tput",), ">=", None if args.skip_throughput else TPUT_TARGET),
        ("proxies' CPU/request", ("us_per_req",), "", None),
    ]
    pairs = [(mesh, minimal, checks)]
    if len(rows) > 3:
        pairs.append((rows[3], mesh, [c if c[2] != ">=" else (*c[:3], None) for c in checks]))
    ok = True
    for top, base, row_checks in pairs:
        ok &= _verdicts(top, base, row_checks)
    return _footer(rows, args) and ok


def _verdicts(top: Row, base: Row, checks: list[tuple[str, tuple[str, ...], str, float | None]]) -> bool:
    print(f"\n{top.name}/{base.name} (median of per-round ratios; per round in brackets)")
    ok = True
    for label, path, op, target in checks:
        per = [_get(m, path) / _get(n, path) for n, m in zip(base.rounds, top.rounds, strict=True)]
        ratio = statistics.median(per)
        if target is None:
            verdict = "(informational)"
        else:
            good = ratio <= target if op == "<=" else ratio >= target
            ok &= good
            verdict = f"target {op} {target:.2f}  {'PASS' if good else 'FAIL'}"
        print(f"  {label:<22}{ratio:7.3f}  [{' '.join(f'{x:.3f}' for x in per)}]  {verdict}")
    return ok


def _footer(rows: list[Row], args: argparse.Namespace) -> bool:
    rates_ok = all(abs(r["achieved"] - args.rate) <= 0.02 * args.rate for row in rows for r in row.rounds)
    print(f"achieved rate within 2% of {args.rate:.0f}/s in every run: {'yes' if rates_ok else 'NO (see rows)'}")
    lag = statistics.median(r["send_lag"]["p99"] for row in rows for r in row.rounds)
    others = statistics.median(r["others"] for row in rows for r in row.rounds)
    print(f"client send lag behind schedule, median p99: {lag:.3f} ms; other processes on this machine used a "
          f"median {others:.2f} of {psutil.cpu_count()} cores during latency runs")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second of the latency runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per latency run")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each latency run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating minimal/mesh rounds (median reported)")
    ap.add_argument("--conns", type=int, default=8, help="keep-alive connections of the client and of wrk")
    ap.add_argument("--tput-seconds", type=int, default=2, help="seconds of each wrk run")
    ap.add_argument("--tput-chunks", type=int, default=3, help="wrk runs per row and round, alternating rows")
    ap.add_argument("--skip-throughput", action="store_true", help="no wrk runs")
    ap.add_argument("--dump-config", type=Path, help="write each Envoy's full config_dump here")
    ap.add_argument("--keep-tmp", action="store_true", help="keep logs and bootstraps")
    ap.add_argument("--route", action="store_true", help="put a MeshHTTPRoute on the mesh row's path")
    ap.add_argument("--role", choices=("bench", "app", "load"), default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--slice", type=float, default=0.25, help="seconds per slice when interleaving minimal and mesh")
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "app":
        run_app(args.port)
        return 0
    if args.role == "load":
        ports = [int(p) for p in args.ports.split(",")]
        print(json.dumps(run_load(ports, args.rate, args.seconds, args.warmup, args.conns, args.slice)))
        return 0
    if not args.skip_throughput and shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="dpagent-latency-"))
    t0 = time.monotonic()
    ok = False
    try:
        with interrupt_safe(Procs()) as procs:
            print(f"setting up app, minimal Envoy pair, CP and two agents (Envoy {find_envoy()}) ...", flush=True)
            rows, sockets = setup(procs, tmp, args)
            print(f"ready in {time.monotonic() - t0:.1f}s; {args.rate:.0f} req/s for {args.seconds:.0f}s "
                  f"(+{args.warmup:.0f}s warm-up) per latency run, wrk -t1 -c{args.conns} {args.tput_seconds}s "
                  "per throughput run", flush=True)
            direct, *compared = rows
            print("direct", flush=True)
            measure_latency(procs, [direct], args)
            throughput_chunks(procs, [direct], args)
            for r in range(args.rounds):
                pair = compared if r % 2 == 0 else compared[::-1]
                print(f"round {r + 1}: latency interleaved in {args.slice:g}s slices, then throughput", flush=True)
                measure_latency(procs, pair, args)
                throughput_chunks(procs, pair, args)
            compare_configs(sockets, args.dump_config)
            ok = report(rows, args)
    except KeyboardInterrupt:
        print("\ninterrupted; every process stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_tmp:
            print(f"logs and bootstraps kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.monotonic() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
