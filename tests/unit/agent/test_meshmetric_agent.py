"""The agent's merged scrape: profile semantics (include beats exclude, None/All/Basic), per-application labels,
apps fetched in parallel from real local HTTP servers, a failing app degrading to Envoy's metrics plus an error
series, and the dynconf poller's ETag handling."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dpagent.agent.dynconf import DynconfPoller, UdsHttpClient
from dpagent.agent.http import SmallHttpServer
from dpagent.agent.meshmetric import FamilyFilter, MergedScrape, MetricsConf, Selector, label_samples

ENVOY = """# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 7
envoy_cluster_upstream_rq_total{envoy_cluster_name="ads_cluster"} 3
# TYPE envoy_cluster_external_upstream_rq_time histogram
envoy_cluster_external_upstream_rq_time_bucket{envoy_cluster_name="backend",le="1"} 1
envoy_cluster_external_upstream_rq_time_count{envoy_cluster_name="backend"} 1
# TYPE envoy_http_downstream_cx_total counter
envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix="x"} 2
# TYPE envoy_listener_manager_lds_api_state gauge
envoy_listener_manager_lds_api_state 1
"""


def body(apps: list[dict[str, object]] | None = None, **sidecar: object) -> bytes:
    return json.dumps({"observability": {"metrics": {"applications": apps or [], "backends": [],
                                                     "sidecar": sidecar, "extraLabels": {}}}}).encode()


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def test_profiles_include_beats_exclude() -> None:
    basic = FamilyFilter(MetricsConf.parse(body()))  # no profile at all means Basic
    assert basic.keep("envoy_cluster_upstream_rq_total") and not basic.keep("envoy_listener_manager_lds_api_state")
    none = FamilyFilter(MetricsConf(profiles=("None",), include=(Selector("Prefix", "envoy_listener"),)))
    assert none.keep("envoy_listener_manager_lds_api_state") and not none.keep("envoy_cluster_upstream_rq_total")
    conf = MetricsConf(profiles=("All",), exclude=(Selector("Regex", "envoy_cluster_.*"),),
                       include=(Selector("Exact", "envoy_cluster_upstream_rq_total"),))
    f = FamilyFilter(conf)
    assert f.keep("envoy_cluster_upstream_rq_total")  # excluded by the regex, included back by name
    assert not f.keep("envoy_cluster_external_upstream_rq_time")
    assert f.keep("envoy_listener_manager_lds_api_state")
    ored = FamilyFilter(MetricsConf(profiles=("None", "Basic")))
    assert ored.keep("envoy_cluster_upstream_rq_total")


def test_label_samples_every_shape() -> None:
    text = "# HELP a x\n# TYPE a counter\na 1\nb{x=\"1\"} 2 1700000000\nc{} 3\n# EOF\n"
    assert label_samples(text, "app", "w\"eb") == (
        '# HELP a x\n# TYPE a counter\na{app="w\\"eb"} 1\nb{app="w\\"eb",x="1"} 2 1700000000\nc{app="w\\"eb"} 3\n')


async def _serve(handler: object) -> SmallHttpServer:
    server = SmallHttpServer(handler, "127.0.0.1", 0, what="test app", flag="-")  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.fixture
async def apps() -> AsyncIterator[tuple[int, int]]:
    async def good(method: str, target: str) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(0.3)
        return 200, {}, b"# TYPE orders_total counter\norders_total{kind=\"a\"} 5\n"

    async def slow(method: str, target: str) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(0.3)
        return 500, {}, b"boom"

    a, b = await _serve(good), await _serve(slow)
    yield a.port, b.port
    await a.close()
    await b.close()


async def test_merge_parallel_and_degrade(apps: tuple[int, int]) -> None:
    async def envoy(path: str) -> str:
        assert path == "/stats/prometheus?usedonly"  # includeUnused false → Envoy's usedonly
        return ENVOY

    scrape = MergedScrape(envoy)
    scrape.set_conf(MetricsConf.parse(body([{"name": "orders", "port": apps[0], "path": "/metrics"},
                                            {"name": "broken", "port": apps[1]}],
                                           profiles={"exclude": [{"type": "Regex", "match": ".*_rq_time"}]})))
    t0 = time.monotonic()
    text = await scrape.scrape()
    assert time.monotonic() - t0 < 0.55  # both 0.3 s apps fetched at once
    assert 'orders_total{dpagent_application="orders",kind="a"} 5' in text
    assert 'dpagent_application_scrape_up{dpagent_application="orders"} 1' in text
    assert 'dpagent_application_scrape_up{dpagent_application="broken"} 0' in text
    assert 'dpagent_application_scrape_errors_total{dpagent_application="broken"} 1' in text
    assert families(text) >= {"envoy_cluster_upstream_rq_total", "envoy_http_downstream_cx_total"}
    assert "envoy_cluster_external_upstream_rq_time" not in families(text)
    assert 'envoy_cluster_name="ads_cluster"' not in text  # Basic drops the proxy's own plumbing
    await scrape.aclose()


async def test_envoy_down_still_answers() -> None:
    async def envoy(path: str) -> None:
        return None

    scrape = MergedScrape(envoy)
    scrape.set_conf(MetricsConf.parse(body([{"port": 1}])))  # nothing listens on port 1
    text = await scrape.scrape()
    assert "envoy stats unavailable" in text and 'dpagent_application_scrape_up{dpagent_application="1"} 0' in text


async def test_dynconf_poller_etag_over_one_connection(tmp_path: Path) -> None:
    calls: list[str] = []
    current: dict[str, object] = {"etag": "v1", "status": 200}

    sock = tmp_path / "dynconf.sock"
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:  # a keep-alive HTTP/1.1 server, as Envoy's listener
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            inm = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("if-none-match")), "")
            calls.append(inm)
            if current["status"] == 404:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            elif inm == current["etag"]:
                writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
            else:
                b = body()
                writer.write(f"HTTP/1.1 200 OK\r\netag: {current['etag']}\r\ncontent-length: {len(b)}\r\n\r\n"
                             .encode() + b)
            await writer.drain()

    server = await asyncio.start_unix_server(serve, str(sock))
    got: list[bytes | None] = []
    poller = DynconfPoller(sock, "/meshmetric", got.append)
    client = UdsHttpClient(sock)
    assert await poller.fetch_once(client) and not await poller.fetch_once(client)
    current["status"] = 404
    assert await poller.fetch_once(client)
    await client.close()
    server.close()
    assert calls == ["", "v1", "v1"] and got == [body(), None] and connections == 1


def test_agent_never_imports_aiohttp_nor_grpc_at_start() -> None:
    code = "import sys, dpagent.agent.app; print([m for m in ('aiohttp', 'grpc') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
