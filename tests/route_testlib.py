"""Helpers for the route-policy tests (MeshHTTPRoute, MeshTCPRoute): golden files next to each test, and the real
Envoy fed a static bootstrap that embeds the built resources (one listener + the clusters it names)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from unit.controlplane.xds._xds_testlib import envoy_binary

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = {"name": "envoy.filters.http.router",
          "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def matched(kind: str, policies: Sequence[Any]) -> Any:
    """Generic matching of parsed route policies for a client proxy the Mesh-wide policies select: the input the
    route plugins receive (to[] items lowest priority first)."""
    from dpagent.controlplane.policies.matching import match
    from dpagent.model.dataplane import decode_dataplane

    client = decode_dataplane({"mesh": "default", "name": "client", "networking": {"address": "10.9.9.9", "inbound": [
        {"port": 9000, "tags": {"kuma.io/service": "client"}}]}})
    return match(kind, policies, client)


def to_plain(msg: Message) -> Any:
    return json.loads(json.dumps(MessageToDict(msg)))


def static_clusters(clusters: Mapping[str, cluster_pb2.Cluster],
                    assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment]) -> list[dict[str, Any]]:
    """EDS clusters become STATIC ones carrying their endpoints (a static bootstrap has no ADS)."""
    out = []
    for name, c in sorted(clusters.items()):
        plain = to_plain(c)
        if plain.get("type") == "EDS":
            plain.pop("edsClusterConfig", None)
            plain["type"] = "STATIC"
            plain["loadAssignment"] = to_plain(assignments[name])
        out.append(plain)
    return out


def bootstrap(filters: Sequence[Message] | Sequence[dict[str, Any]], clusters: Sequence[dict[str, Any]],
              port: int = 0) -> dict[str, Any]:
    """One listener on 127.0.0.1:`port` with the given network filters, plus `clusters`."""
    plain = [f if isinstance(f, dict) else to_plain(f) for f in filters]
    return {
        "node": {"id": "default.test", "cluster": "test"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "staticResources": {
            "listeners": [{"name": "outbound:test", "address": {"socketAddress": {"address": "127.0.0.1",
                                                                                  "portValue": port}},
                           "filterChains": [{"filters": plain}]}],
            "clusters": list(clusters)},
    }


def hcm(route_config: Message) -> dict[str, Any]:
    """An outbound HCM with the RouteConfiguration inline (the CP serves it over RDS; a static bootstrap has none)."""
    return {"name": HCM, "typedConfig": {"@type": HCM_TYPE, "statPrefix": "outbound", "normalizePath": True,
                                         "routeConfig": to_plain(route_config), "httpFilters": [ROUTER]}}


@contextmanager
def running_envoy(config: dict[str, Any], workdir: Path, port: int) -> Iterator[None]:
    """Envoy serving `config` until the block ends; ready once its listener accepts a request."""
    (workdir / "envoy.json").write_text(json.dumps(config))
    log = (workdir / "envoy.log").open("w")
    proc = subprocess.Popen([envoy_binary(), "-c", "envoy.json", "--disable-hot-restart", "--log-level", "warn",
                             "--base-id", str(port)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (workdir / "envoy.log").read_text()[-3000:]
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (workdir / "envoy.log").read_text()[-3000:]
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

