"""MeshAccessLog's xDS step on its own: already-matched backends in, access loggers on HCMs and tcp_proxies out
(goldens), each case also loaded by the real Envoy; the Kuma placeholders substituted per listener."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.meshaccesslog.api import parse_conf
from dpagent.controlplane.policies.meshaccesslog.formats import HTTP_DEFAULT, TCP_DEFAULT, LogContext
from dpagent.controlplane.policies.meshaccesslog.plugin import AccessLogRules, MeshAccessLogPlugin
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.model.accesslog import FIFO_NAME, decode
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

TESTDATA = Path(__file__).parent / "testdata"
MESH = parse_mesh({"type": "Mesh", "name": "default",
                   "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})


def _dp(name: str, address: str, inbound: list[dict[str, Any]], outbound: list[dict[str, Any]],
        tproxy: bool = False) -> Any:
    net: dict[str, Any] = {"address": address, "inbound": inbound, "outbound": outbound}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    return parse_dataplane({"type": "Dataplane", "mesh": "default", "name": name, "networking": net})


def _ib(port: int, service: str, protocol: str) -> dict[str, Any]:
    return {"port": port, "servicePort": port + 1, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol,
                                                            "kuma.io/zone": "zone-1"}}


WEB = _dp("web-1", "10.0.0.1", [_ib(8080, "web", "http")],
          [{"port": 10001, "tags": {"kuma.io/service": "backend"}}, {"port": 10002, "tags": {"kuma.io/service": "db"}}])
WEB_TP = _dp("web-2", "10.0.0.4", [_ib(8080, "web", "http")], [], tproxy=True)
BACKEND = _dp("backend-1", "10.0.0.2", [_ib(8080, "backend", "http")], [])
DB = _dp("db-1", "10.0.0.3", [_ib(5432, "db", "tcp")], [])
DPS = [WEB, WEB_TP, BACKEND, DB]

FILE = {"type": "File", "file": {"path": "/dev/stdout"}}
JSON_FILE = {"type": "File", "file": {"path": "/dev/null", "format": {
    "type": "Json", "omitEmptyValues": True,
    "json": [{"key": "src", "value": "%KUMA_SOURCE_SERVICE%"}, {"key": "status", "value": "%RESPONSE_CODE%"}]}}}
TCP = {"type": "Tcp", "tcp": {"address": "10.9.9.9:5000", "format": {
    "type": "Plain", "plain": "%KUMA_MESH% %KUMA_DESTINATION_SERVICE%"}}}
OTEL = {"type": "OpenTelemetry", "openTelemetry": {
    "endpoint": "otel-collector:4317", "attributes": [{"key": "k8s.zone", "value": "%KUMA_ZONE%"}],
    "body": {"kvlistValue": {"values": [{"key": "dst", "value": {"stringValue": "%KUMA_DESTINATION_SERVICE%"}}]}}}}


MESH_REF = TargetRef("Mesh")


def item(backends: list[dict[str, Any]], ref: TargetRef = MESH_REF, rank: int = 0) -> Item:
    return Item("p", rank, 0, {"backends": backends}, ref)


def inbound(*backends: dict[str, Any]) -> Any:
    return parse_conf({"backends": list(backends)}).backends


CASES: dict[str, tuple[Any, AccessLogRules]] = {
    "outbound_http_and_tcp": (WEB, AccessLogRules(to=(item([FILE, TCP]), item(
        [JSON_FILE, OTEL], TargetRef("MeshService", "backend"), 1)))),
    "inbound_tcp_default_format": (DB, AccessLogRules(inbounds={"10.0.0.3:5432": inbound(FILE, TCP)})),
    "transparent_capture_and_passthrough": (WEB_TP, AccessLogRules(
        to=(item([FILE]),), inbounds={"10.0.0.4:8080": inbound(JSON_FILE)})),
}


def _apply(dp: Any, rules: AccessLogRules) -> ResourceSet:
    ctx = MeshContext(MESH, DPS)
    rs = generate(ctx, dp)
    MeshAccessLogPlugin().apply(rs, ctx, dp, rules)
    return rs


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    msgs = _apply(*CASES[case]).messages()
    resources = {t: msgs[t] for t in (CLUSTER, LISTENER) if t in msgs}
    assert_golden(resources_to_plain(resources), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    dp = CASES[case][0]
    envoy_accepts(_apply(*CASES[case]).messages(), tmp_path, f"spiffe://default/{dp.name.split('-')[0]}")


def _logs(rs: ResourceSet, listener: str) -> list[dict[str, Any]]:
    """Every access logger in a listener, as plain dicts, by filter chain."""
    msg = MessageToDict(rs.get(LISTENER, listener).message)  # type: ignore[union-attr]
    chains = msg.get("filterChains", []) + ([msg["defaultFilterChain"]] if "defaultFilterChain" in msg else [])
    return [log for c in chains for f in c["filters"] for log in f.get("typedConfig", {}).get("accessLog", [])]


def test_placeholders_and_default_formats_per_side() -> None:
    rs = _apply(WEB, AccessLogRules(to=(item([{"type": "File", "file": {"path": "/l"}}]),)))
    [out] = _logs(rs, names.outbound_listener("127.0.0.1", 10001))
    text = out["typedConfig"]["logFormat"]["textFormatSource"]["inlineString"]
    expected = (HTTP_DEFAULT.replace("%KUMA_MESH%", "default").replace("%KUMA_SOURCE_SERVICE%", "web")
                .replace("%KUMA_DESTINATION_SERVICE%", "backend")
                .replace("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", "10.0.0.1")) + "\n"
    assert text == expected and "%KUMA" not in text
    rs = _apply(DB, AccessLogRules(inbounds={"10.0.0.3:5432": inbound({"type": "File", "file": {"path": "/l"}})}))
    [ib] = _logs(rs, names.inbound_listener("10.0.0.3", 5432))
    text = ib["typedConfig"]["logFormat"]["textFormatSource"]["inlineString"]
    assert text.startswith(TCP_DEFAULT.split("%KUMA_MESH%")[0]) and " default 10.0.0.3(unknown)->" in text
    assert "(db) took" in text


def test_every_placeholder() -> None:
    ctx = LogContext("m", "web", "backend", "10.0.0.1", "OUTBOUND", "zone-1", "web-1")
    got = ctx.substitute("%KUMA_MESH% %KUMA_SOURCE_SERVICE% %KUMA_DESTINATION_SERVICE% %KUMA_SOURCE_ADDRESS% "
                         "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT% %KUMA_TRAFFIC_DIRECTION% %KUMA_ZONE% %RESPONSE_CODE%")
    assert got == "m web backend 10.0.0.1:0 10.0.0.1 OUTBOUND zone-1 %RESPONSE_CODE%"


def test_tcp_backend_writes_the_agents_line_protocol() -> None:
    rs = _apply(WEB, AccessLogRules(to=(item([TCP]),)))
    [log] = _logs(rs, names.outbound_listener("127.0.0.1", 10002))
    cfg = log["typedConfig"]
    assert cfg["path"] == FIFO_NAME
    assert cfg["logFormat"]["jsonFormat"] == {"address": "10.9.9.9:5000", "message": "default db"}
    # what Envoy renders from that format is what the agent decodes
    line = decode(json.dumps(cfg["logFormat"]["jsonFormat"]).encode() + b"\n")
    assert line is not None and (line.address, line.message) == ("10.9.9.9:5000", "default db")
    obj = decode(b'{"address":"c:1","message":{"a":1}}\n')
    assert obj is not None and obj.message == '{"a":1}'
    assert decode(b"c:1;legacy message\n") == type(obj)("c:1", "legacy message")
    assert decode(b"garbage\n") is None


def test_otel_cluster_once_per_endpoint() -> None:
    rs = _apply(WEB, AccessLogRules(to=(item([OTEL, OTEL]),)))
    clusters = [n for n in rs.messages()[CLUSTER] if n.startswith("meshaccesslog:opentelemetry:")]
    assert clusters == ["meshaccesslog:opentelemetry:otel-collector:4317"]
    assert rs.get(CLUSTER, clusters[0]).message.type == 1  # type: ignore[union-attr]  # STRICT_DNS for a hostname


def test_no_policy_leaves_shared_listeners_shared() -> None:
    rs = _apply(WEB_TP, AccessLogRules(inbounds={"10.0.0.4:8080": inbound(FILE)}))
    assert rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH).shared is not None  # type: ignore[union-attr]
