"""The /bootstrap client: the request body, error classification, and retry behaviour against a real server."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time

import httpx
import pytest
from testlib import free_port

from dpagent.agent import bootstrap as bs
from dpagent.errors import ControlPlaneRejected, ControlPlaneUnavailable

PARAMS = bs.BootstrapRequestParams(
    mesh="demo", name="sample", token="token1234", token_path="/etc/dpagent/token",
    resource_json='{"type":"Dataplane"}',
    envoy=bs.EnvoyVersion("1.40.0", "abc/1.40.0/Clean/RELEASE/BoringSSL"), ca_cert="", dns_port=15053,
    readiness_port=9902, workdir="/tmp/wd")


def test_request_body_has_kumas_field_names():
    body = bs.build_request(PARAMS)
    for key in ("mesh", "name", "proxyType", "dataplaneToken", "dataplaneTokenPath", "dataplaneResource", "version",
                "caCert", "dynamicMetadata", "dnsPort", "readinessPort", "operatingSystem", "features", "resources",
                "workdir", "metricsResources", "systemCaPath", "ipv6Enabled", "spireResources"):
        assert key in body, key
    assert body["version"]["envoy"] == {"version": "1.40.0", "build": "abc/1.40.0/Clean/RELEASE/BoringSSL",
                                        "kumaDpCompatible": True}
    assert body["version"]["kumaDp"]["version"]
    assert body["operatingSystem"] == "linux"
    assert "feature-tcp-accesslog-via-named-pipe" in body["features"]
    json.dumps(body)  # serialisable


def test_empty_token_is_omitted():
    import dataclasses

    body = bs.build_request(dataclasses.replace(PARAMS, token="", token_path="", resource_json=""))
    assert "dataplaneToken" not in body and "dataplaneTokenPath" not in body and "dataplaneResource" not in body


def _resp(code: int, text: str = "") -> httpx.Response:
    return httpx.Response(code, text=text)


@pytest.mark.parametrize(
    ("code", "text", "exc", "fragment"),
    [
        (401, "bad signature", ControlPlaneRejected, "rejected the dataplane token (401): bad signature"),
        (403, "", ControlPlaneRejected, "dpagent token generate"),
        (404, "", bs.Retryable, "not registered on the control plane yet"),
        (404, '{"title":"Dataplane not found"}', bs.Retryable, "not registered"),
        (404, "404: Page Not Found", ControlPlaneRejected, "not the REST API (5681)"),
        (422, '{"title":"bad","causes":[{"field":"networking.address","message":"must be defined"}]}',
         ControlPlaneRejected, "networking.address: must be defined"),
        (400, "SAN mismatch", ControlPlaneRejected, "(400): SAN mismatch"),
        (500, "", bs.Retryable, "failed (500)"),
        (503, "overloaded", bs.Retryable, "overloaded"),
    ],
)
def test_classify(code, text, exc, fragment):
    with pytest.raises(exc) as e:
        bs.classify_response(_resp(code, text), "https://cp:5678")
    assert fragment in str(e.value)


def test_parse_response_and_garbage():
    boot = "admin:\n  address: {pipe: {path: /x}}\n"
    ok = json.dumps({"bootstrap": base64.b64encode(boot.encode()).decode(), "kumaSidecarConfiguration": {"a": 1}})
    r = bs.parse_response(ok.encode())
    assert r.config["admin"]["address"]["pipe"]["path"] == "/x" and r.sidecar == {"a": 1}
    with pytest.raises(ControlPlaneRejected, match="not a bootstrap response"):
        bs.parse_response(b"<html>")


async def _serve(answers: list[tuple[int, str]], seen: list[float]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        await reader.readexactly(length)
        seen.append(time.monotonic())
        code, text = answers.pop(0) if answers else (500, "")
        writer.write(f"HTTP/1.1 {code} X\r\ncontent-length: {len(text)}\r\nconnection: close\r\n\r\n{text}".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_retries_with_constant_backoff_then_succeeds():
    boot = base64.b64encode(b"admin: {}\n").decode()
    seen: list[float] = []
    server = await _serve([(503, ""), (404, ""), (200, json.dumps({"bootstrap": boot}))], seen)
    port = server.sockets[0].getsockname()[1]
    async with server:
        r = await bs.fetch_bootstrap(f"http://127.0.0.1:{port}", {}, verify=False, ca_file="", backoff=0.2,
                                     max_duration=5)
    assert r.config == {"admin": {}}
    assert len(seen) == 3
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert all(0.18 <= g < 1.0 for g in gaps), gaps


async def test_gives_up_after_max_duration():
    t0 = time.monotonic()
    with pytest.raises(ControlPlaneUnavailable) as e:
        await bs.fetch_bootstrap(f"http://127.0.0.1:{free_port()}", {}, verify=False, ca_file="", backoff=0.1,
                                 max_duration=0.5)
    assert 0.4 < time.monotonic() - t0 < 3
    assert "within 0.5s" in str(e.value) and "cannot connect" in str(e.value)


async def test_final_error_is_not_retried():
    seen: list[float] = []
    server = await _serve([(422, "mesh missing")], seen)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ControlPlaneRejected, match="mesh missing"):
            await bs.fetch_bootstrap(f"http://127.0.0.1:{port}", {}, verify=False, ca_file="", backoff=0.1,
                                     max_duration=5)
    assert len(seen) == 1


async def test_a_dead_replica_is_skipped_for_a_live_one_without_waiting_the_backoff():
    boot = base64.b64encode(b"admin: {}\n").decode()
    seen: list[float] = []
    server = await _serve([(200, json.dumps({"bootstrap": boot}))], seen)
    port = server.sockets[0].getsockname()[1]
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    async with server:
        r = await bs.fetch_bootstrap((dead, f"http://127.0.0.1:{port}"), {}, verify=False, ca_file="",
                                     backoff=5, max_duration=10)
    assert r.config == {"admin": {}} and len(seen) == 1
    assert time.monotonic() - t0 < 2, "the live replica was asked at once, not after a backoff"


def test_several_cp_addresses_reach_the_request_as_hosts():
    urls = ("https://cp-a.example:5678", "https://10.0.0.2:5678", "https://cp-a.example:5678")
    assert bs.cp_hosts(urls) == ("cp-a.example", "10.0.0.2")
    body = bs.build_request(bs.BootstrapRequestParams(
        mesh="m", name="n", token="t", token_path="", resource_json="", envoy=bs.EnvoyVersion("1.30.0", ""),
        ca_cert="", dns_port=0, readiness_port=0, workdir="", cp_hosts=bs.cp_hosts(urls)))
    assert body["controlPlaneHosts"] == ["cp-a.example", "10.0.0.2"]


def test_inline_ca_must_be_pem():
    from dpagent.errors import ConfigError

    with pytest.raises(ConfigError, match="takes the PEM text itself"):
        bs.ssl_context("/etc/ca.pem", "", False)
