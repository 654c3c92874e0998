"""MeshMetric end to end with a real Prometheus (Debian's 2.42): two dataplanes (web-1 → backend-1), backend's app
exposing its own metrics, Prometheus finding both through the CP's HTTP SD and scraping each proxy's merged
endpoint; PromQL over Prometheus' HTTP API sees Envoy's request counts for the traffic this test sent and the app's
own series; an `exclude` added to the policy is gone from the scraped series within 2 scrapes; a failing app
endpoint leaves Envoy's metrics plus an error series; MADS answers a client speaking Prometheus' Kuma SD protocol
(decoded with protobuf's own JSON parser); a dataplane that leaves disappears from both discoveries.

The dataplanes have their own loopback addresses (127.0.0.2, 127.0.0.3) so both serve the backend's one port.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from backend_app import BackendApp
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "w_in", "w_out", "prom", "metrics", "prometheus", "sd")}
WEB_ADDR, BACKEND_ADDR = "127.0.0.2", "127.0.0.3"
URL = f"http://127.0.0.1:{PORTS['w_out']}/"
SCRAPE, REFRESH = 1.0, 1.0  # Prometheus' scrape interval and HTTP SD refresh interval (seconds)
APP_SERIES = 2000


def dataplane(name: str, service: str, address: str, port: int, app_port: int, outbound: str = "") -> str:
    return f"""\
type: Dataplane
mesh: default
name: {name}
networking:
  address: {address}
  inbound:
  - port: {port}
    servicePort: {app_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: http
      kuma.io/zone: zone-1
{outbound}"""


WEB_OUTBOUND = f"""\
  outbound:
  - port: {PORTS['w_out']}
    tags:
      kuma.io/service: backend
"""

MESH_WIDE = {"type": "MeshMetric", "mesh": "default", "name": "metrics-default", "spec": {
    "targetRef": {"kind": "Mesh"},
    "default": {"sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}]}},
                "backends": [{"type": "Prometheus", "prometheus": {"port": PORTS["prom"], "path": "/metrics"}}]}}}


def backend_policy(exclude: list[dict[str, str]] | None = None, otel: str = "") -> dict[str, Any]:
    profiles: dict[str, Any] = {"appendProfiles": [{"name": "Basic"}]}
    if exclude:
        profiles["exclude"] = exclude
    default: dict[str, Any] = {"sidecar": {"profiles": profiles},
                               "applications": [{"name": "orders", "port": PORTS["metrics"], "path": "/metrics"}]}
    if otel:  # backends is a list: this policy's replaces the mesh-wide one, so it repeats the Prometheus backend
        default["backends"] = [*MESH_WIDE["spec"]["default"]["backends"],  # type: ignore[index]
                               {"type": "OpenTelemetry", "openTelemetry": {"endpoint": otel, "refreshInterval": "1s"}}]
    return {"type": "MeshMetric", "mesh": "default", "name": "metrics-backend", "spec": {
        "targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}}


class MetricsApp:
    """The backend's own /metrics: a counter the test can look for, and `failing` to make it answer 500."""

    def __init__(self, port: int) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"boom" if app.failing else app.body
                self.send_response(500 if app.failing else 200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.failing = False
        self.body = ("# TYPE orders_processed_total counter\norders_processed_total 42\n"
                     "# TYPE orders_latency_seconds gauge\n" +
                     "".join(f'orders_latency_seconds{{shard="{i}"}} {i / 1000}\n' for i in range(APP_SERIES))).encode()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class SdRecorder:
    """Between Prometheus and the CP's HTTP SD: forwards each fetch (with Prometheus' own Authorization header)
    and records when Prometheus got which dataplanes, so the test sees discovery at the SD fetch itself, before
    Prometheus' discovery manager batches updates to its scrape manager (every 5 s, not configurable in 2.42)."""

    def __init__(self, port: int, upstream: str) -> None:
        rec = self
        self.fetches: list[tuple[float, str, frozenset[str]]] = []  # (time, authorization, dataplanes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("authorization", "")
                r = httpx.get(upstream, headers={"authorization": auth}, timeout=5)
                dps = frozenset(g["labels"]["dataplane"] for g in r.json()) if r.status_code == 200 else frozenset()
                rec.fetches.append((time.monotonic(), auth, dps))
                self.send_response(r.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_with(self, dataplanes: set[str], after: float) -> float | None:
        return next((t for t, _, dps in self.fetches if t >= after and dps >= dataplanes), None)

    def close(self) -> None:
        self.server.shutdown()


class Prometheus:
    def __init__(self, tmp: Path, sd_url: str, token_file: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("Debian package `prometheus` is not installed (apt-get install prometheus)")
        self.url = f"http://127.0.0.1:{PORTS['prometheus']}"
        cfg = {"global": {"scrape_interval": f"{SCRAPE:g}s", "scrape_timeout": f"{SCRAPE:g}s"},
               "scrape_configs": [{"job_name": "mesh", "http_sd_configs": [{
                   "url": sd_url, "refresh_interval": f"{REFRESH:g}s",
                   "authorization": {"type": "Bearer", "credentials_file": str(token_file)}}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{PORTS['prometheus']}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))  # noqa: SIM115
        wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 20,
                 what=f"Prometheus ready (log: {self.log})")

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]  # type: ignore[no-any-return]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> dict[str, dict[str, Any]]:
        active = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return {t["labels"]["dataplane"]: t for t in active}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def mesh(cp, agents, tmp_path_factory) -> Iterator[dict[str, Any]]:
    app = BackendApp("b1")
    metrics_app = MetricsApp(PORTS["metrics"])
    web = agents("web-1", dataplane("web-1", "web", WEB_ADDR, PORTS["w_in"], 1, WEB_OUTBOUND), wait=False)
    backend = agents("backend-1", dataplane("backend-1", "backend", BACKEND_ADDR, PORTS["b_in"], app.port),
                     wait=False)
    web.wait_ready(40)
    backend.wait_ready(40)
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: c.get(URL).headers.get("x-instance") == "b1", 30, what="web -> backend through the mesh")
    sd = SdRecorder(PORTS["sd"], f"{cp.api}/prometheus/http_sd")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), sd.url, cp.data_dir / "admin-token")
    yield {"web": web, "backend": backend, "prom": prom, "app": metrics_app, "sd": sd}
    prom.stop()
    sd.close()
    metrics_app.close()
    app.close()


def put(cp, doc: dict[str, Any]) -> None:
    r = httpx.put(f"{cp.api}/meshes/default/meshmetrics/{doc['name']}", json=doc, timeout=5)
    assert r.status_code in (200, 201), r.text


def test_discovered_scraped_and_queried(mesh, cp):
    prom, sd = mesh["prom"], mesh["sd"]
    assert prom.targets() == {}  # no MeshMetric yet: nothing to discover
    t0 = time.monotonic()
    put(cp, MESH_WIDE)
    put(cp, backend_policy())
    wait_for(lambda: sd.first_with({"web-1", "backend-1"}, t0), 3 * REFRESH, interval=0.05,
             what="Prometheus' HTTP SD fetch returning both dataplanes")
    fetched = (sd.first_with({"web-1", "backend-1"}, t0) or 0) - t0
    assert fetched <= REFRESH + 0.5  # within one refresh (+ the CP's rebuild)
    admin_token = (cp.data_dir / "admin-token").read_text().strip()
    assert {auth for _, auth, _ in sd.fetches} == {f"Bearer {admin_token}"}  # http_sd_configs' authorization
    found = wait_for(lambda: (t := prom.targets()).keys() == {"web-1", "backend-1"} and t, 5 + 2 * REFRESH + 2,
                     interval=0.1, what="Prometheus' scrape manager holding both targets")
    discovered = time.monotonic() - t0
    assert found["web-1"]["scrapeUrl"] == f"http://{WEB_ADDR}:{PORTS['prom']}/metrics"
    assert found["backend-1"]["labels"].items() >= {"mesh": "default", "service": "backend", "zone": "zone-1",
                                                    "dataplane": "backend-1"}.items()
    wait_for(lambda: all(t["health"] == "up" for t in prom.targets().values()), 10, interval=0.2,
             what=f"both targets scraped (log: {prom.log})")

    # Envoy request counts for traffic this test sends: web-1's outbound cluster `backend`
    q = 'sum(envoy_cluster_upstream_rq_total{dataplane="web-1",envoy_cluster_name="backend"})'
    before = wait_for(lambda: prom.value(q), 10, interval=0.2, what="web's request counter in Prometheus")
    sent = 25
    with httpx.Client(timeout=3) as c:
        assert all(c.get(URL).status_code == 200 for _ in range(sent))
    after = wait_for(lambda: (v := prom.value(q)) is not None and v >= before + sent and v, 5 * SCRAPE,
                     interval=0.2, what=f"{q} grown by {sent}")
    assert after == before + sent
    # the app's own series, merged into backend-1's scrape with its application label
    app_series = prom.query('orders_processed_total{dataplane="backend-1"}')
    assert [s["metric"].get("dpagent_application") for s in app_series] == ["orders"]
    assert float(app_series[0]["value"][1]) == 42
    assert prom.value('count(orders_latency_seconds{dataplane="backend-1"})') == APP_SERIES
    print(f"Prometheus' HTTP SD fetch returned both dataplanes {fetched:.2f}s after the MeshMetric was applied "
          f"(refresh {REFRESH:g}s); its scrape manager had them after {discovered:.2f}s; {q} went {before:g} -> "
          f"{after:g} for {sent} requests")


def test_exclude_shows_up_within_two_scrapes(mesh, cp):
    prom = mesh["prom"]
    q = 'envoy_cluster_upstream_rq_total{dataplane="backend-1"}'
    wait_for(lambda: prom.query(q), 10, interval=0.2, what="backend's upstream counters scraped")
    put(cp, backend_policy(exclude=[{"type": "Regex", "match": "envoy_cluster_upstream_rq_.*"}]))
    t0 = time.monotonic()
    direct = f"http://{BACKEND_ADDR}:{PORTS['prom']}/metrics"
    wait_for(lambda: "envoy_cluster_upstream_rq_total" not in httpx.get(direct, timeout=3).text, 10,
             interval=0.05, what="the proxy's own scrape to drop the excluded family")
    served = time.monotonic()
    wait_for(lambda: not prom.query(q), 10, interval=0.1, what="the excluded series gone from Prometheus")
    gone = time.monotonic()
    print(f"exclude regex: agent serving the new profile {served - t0:.2f}s after the policy change, Prometheus "
          f"without the series {gone - served:.2f}s later (scrape interval {SCRAPE:g}s)")
    assert gone - served <= 2 * SCRAPE + 0.5  # 2 scrapes (+ query slack)
    assert prom.query('envoy_cluster_upstream_cx_total{dataplane="backend-1"}')  # the rest of Basic stays


def test_failing_app_degrades_to_envoy_plus_error_series(mesh):
    prom, app = mesh["prom"], mesh["app"]
    direct = f"http://{BACKEND_ADDR}:{PORTS['prom']}/metrics"
    app.failing = True
    try:
        r = httpx.get(direct, timeout=5)
        assert r.status_code == 200 and "orders_processed_total" not in r.text
        assert 'dpagent_application_scrape_up{dpagent_application="orders"} 0' in r.text
        assert "envoy_server_live" in r.text
        wait_for(lambda: prom.value('dpagent_application_scrape_up{dataplane="backend-1"}') == 0, 5 * SCRAPE,
                 interval=0.2, what="the error series in Prometheus")
        assert prom.value('up{dataplane="backend-1"}') == 1  # the scrape itself never failed
    finally:
        app.failing = False


def test_opentelemetry_backend_pushes_to_a_grpc_receiver(mesh, cp):
    """The same merged metrics, pushed every refreshInterval with OTLP/gRPC to a receiver in this test."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms

    got: list[Any] = []

    def export(request: bytes, context: Any) -> bytes:
        got.append((time.monotonic(), ms.ExportMetricsServiceRequest.FromString(request)))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        put(cp, backend_policy(otel=f"127.0.0.1:{port}"))
        wait_for(lambda: len(got) >= 2, 15, interval=0.1, what="two OTLP pushes from backend-1's agent")
        _, req = got[-1]
        [rm] = req.resource_metrics
        resource = {a.key: a.value.string_value for a in rm.resource.attributes}
        metrics = {m.name: m for sm in rm.instrumentation_library_metrics for m in sm.metrics}
        assert resource == {"service.name": "backend", "mesh": "default", "dataplane": "backend-1"}
        assert metrics["envoy_server_live"].WhichOneof("data") == "gauge"
        rq = metrics["envoy_cluster_upstream_cx_total"]
        assert rq.WhichOneof("data") == "sum" and rq.sum.is_monotonic
        [orders] = metrics["orders_processed_total"].sum.data_points  # a counter in the app's own text
        assert orders.as_double == 42 and {a.key: a.value.string_value for a in orders.attributes} == {
            "dpagent_application": "orders"}
        gap = got[-1][0] - got[-2][0]
        print(f"OTLP push: {len(metrics)} metrics per export, {gap:.2f}s between pushes (refreshInterval 1s)")
        assert 0.5 <= gap <= 2.0
    finally:
        put(cp, backend_policy())
        server.stop(0)


# ---- MADS, as Prometheus' Kuma SD speaks it -------------------------------------------------------------------

MADS_TYPE = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"


def _mads_pool() -> Any:
    """kuma.observability.v1.MonitoringAssignment as Prometheus compiles it (discovery/xds/kuma_mads.pb.go field
    numbers), registered so protobuf's JSON parser can unpack the Any exactly as protojson does."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("kuma.observability.v1.MonitoringAssignment")
        return pool
    except KeyError:
        pass
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="dpagent_test/kuma_mads.proto", package="kuma.observability.v1",
                                             syntax="proto3")
    ma = fdp.message_type.add(name="MonitoringAssignment")

    def string_map(msg: Any, name: str, number: int, scope: str) -> None:
        entry = msg.nested_type.add(name="LabelsEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="key")
        entry.field.add(name="value", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="value")
        msg.field.add(name=name, number=number, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                      type_name=f".kuma.observability.v1.{scope}.LabelsEntry", json_name=name)

    target = ma.nested_type.add(name="Target")
    for name, number, json_name in (("name", 1, "name"), ("scheme", 2, "scheme"), ("address", 3, "address"),
                                    ("metrics_path", 4, "metricsPath")):
        target.field.add(name=name, number=number, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name=json_name)
    string_map(target, "labels", 5, "MonitoringAssignment.Target")
    ma.field.add(name="mesh", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="mesh")
    ma.field.add(name="service", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="service")
    ma.field.add(name="targets", number=4, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                 type_name=".kuma.observability.v1.MonitoringAssignment.Target", json_name="targets")
    string_map(ma, "labels", 5, "MonitoringAssignment")
    pool.Add(fdp)
    return pool


class KumaSdClient:
    """Prometheus' HTTPResourceClient + fetchDiscovery for kuma_sd_configs: POST <server>/v3/discovery:
    monitoringassignments?fetch-timeout=..., a proto-JSON DiscoveryRequest (proto field names) carrying the last
    version and nonce and the client id as node id; 304 means "no change"; the response's Any resources are
    MonitoringAssignments, turned into targets with the __meta_kuma_* labels."""

    def __init__(self, server: str, client_id: str = "prometheus-e2e", fetch_timeout: str = "3s") -> None:
        self.url = f"{server}/v3/discovery:monitoringassignments"
        self.client_id, self.fetch_timeout = client_id, fetch_timeout
        self.version, self.nonce = "", ""
        self.pool = _mads_pool()

    def fetch(self) -> list[dict[str, str]] | None:
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf import json_format, message_factory

        req = discovery_pb2.DiscoveryRequest(version_info=self.version, response_nonce=self.nonce, type_url=MADS_TYPE)
        req.node.id = self.client_id
        body = json_format.MessageToJson(req, preserving_proto_field_name=True)
        r = httpx.post(self.url, params={"fetch-timeout": self.fetch_timeout}, content=body, timeout=20,
                       headers={"content-type": "application/json", "accept": "application/json",
                                "user-agent": "Prometheus/2.42.0"})
        if r.status_code == 304:
            return None
        assert r.status_code == 200, r.text
        resp = json_format.Parse(r.text, discovery_pb2.DiscoveryResponse(), ignore_unknown_fields=True,
                                 descriptor_pool=self.pool)
        self.version, self.nonce = resp.version_info, resp.nonce
        assert resp.type_url == MADS_TYPE
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(
            "kuma.observability.v1.MonitoringAssignment"))
        targets = []
        for res in resp.resources:
            assert res.type_url == MADS_TYPE
            ma = cls()
            res.Unpack(ma)
            for t in ma.targets:
                targets.append({"__meta_kuma_mesh": ma.mesh, "__meta_kuma_service": ma.service,
                                "__meta_kuma_dataplane": t.name, "__address__": t.address, "instance": t.name,
                                "__scheme__": t.scheme, "__metrics_path__": t.metrics_path,
                                **{f"__meta_kuma_label_{k}": v for k, v in ma.labels.items()}})
        return targets


def test_mads_and_leaving(mesh, cp):
    client = KumaSdClient(cp.api)
    first = client.fetch()
    assert first is not None
    by_dp = {t["__meta_kuma_dataplane"]: t for t in first}
    assert by_dp.keys() == {"web-1", "backend-1"}
    assert by_dp["web-1"].items() >= {"__address__": f"{WEB_ADDR}:{PORTS['prom']}", "__scheme__": "http",
                                      "__metrics_path__": "/metrics", "__meta_kuma_mesh": "default",
                                      "__meta_kuma_service": "web", "__meta_kuma_label_kuma_io_zone": "zone-1"}.items()
    t0 = time.monotonic()
    assert client.fetch() is None and time.monotonic() - t0 >= 2.5  # long-poll held, nothing changed: 304

    mesh["web"].stop()  # graceful: the agent announces its drain, the CP drops it from discovery
    t0 = time.monotonic()
    after = client.fetch()
    assert after is not None and [t["__meta_kuma_dataplane"] for t in after] == ["backend-1"]
    sd = httpx.get(f"{cp.api}/prometheus/http_sd", timeout=5).json()
    assert [g["labels"]["dataplane"] for g in sd] == ["backend-1"]
    wait_for(lambda: mesh["prom"].targets().keys() == {"backend-1"}, 3 * REFRESH + 2, interval=0.2,
             what="Prometheus dropping the dataplane that left")
    print(f"MADS: web-1's leave answered a held long-poll {time.monotonic() - t0:.2f}s after SIGTERM")
