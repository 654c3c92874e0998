"""Scrape-target discovery for Prometheus, so nobody lists dataplanes by hand: Prometheus' generic HTTP SD
(`http_sd_configs`, GET /prometheus/http_sd) and Kuma's monitoring assignment discovery (MADS, what upstream
Prometheus' `kuma_sd_configs` reads: REST-JSON xDS, POST /v3/discovery:monitoringassignments, long-polled).

Targets are the Prometheus backends of each dataplane's effective MeshMetric; a dataplane that is leaving (drain
announced) or deleted drops out at once. The routes sit behind the API's authorization (GET on Dataplane in every
mesh: the admin token, or a user token whose roles allow it; see authz_routes.py), on the API port and on
`--monitoring-port`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web

from dpagent import safe_yaml
from dpagent.controlplane.policies.meshmetric.discovery import Target, mesh_targets, sanitize_label
from dpagent.controlplane.store import ResourceStore
from dpagent.durations import parse_duration

HTTP_SD_PATH = "/prometheus/http_sd"
MADS_PATH = "/v3/discovery:monitoringassignments"
MADS_TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"
DEFAULT_FETCH_TIMEOUT = 30.0  # Kuma's default when the client sends none; Prometheus sends its own (2m)
MAX_FETCH_TIMEOUT = 300.0
POLL = 0.5  # how often a held MADS request re-reads the targets (Kuma refreshes assignments every 1 s)


class MonitoringDiscovery:
    def __init__(self, store: ResourceStore, state: Callable[[str], Any], leaving: Collection[tuple[str, str]]
                 ) -> None:
        """`state(mesh)` returns the mesh's current generation state (XdsSync.state); `leaving` is live."""
        self.store = store
        self.state = state
        self.leaving = leaving

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(HTTP_SD_PATH, self.http_sd)
        app.router.add_post(MADS_PATH, self.mads)

    async def targets(self, client_id: str) -> list[Target]:
        """Current targets; a backend with a clientId is only handed to the Prometheus with that id (MADS: its
        `client_id`; HTTP SD: `?clientId=`), one without to every Prometheus."""
        out: list[Target] = []
        for rec in await self.store.list("Mesh"):
            state = await self.state(rec.name)
            if state is None:
                continue
            for t in mesh_targets(state.ctx, state.ctx.parsed_policies):
                if (t.mesh, t.dataplane) in self.leaving or t.dataplane in state.leaving:
                    continue
                if t.client_id and t.client_id != client_id:
                    continue
                out.append(t)
        return out

    # ---- Prometheus http_sd_configs ------------------------------------------------------------------------

    async def http_sd(self, request: web.Request) -> web.Response:
        groups = [{"targets": [t.address], "labels": http_sd_labels(t)}
                  for t in await self.targets(request.query.get("clientId", ""))]
        return web.json_response(groups)

    # ---- MADS (REST-JSON xDS, as Prometheus' Kuma SD speaks it) ---------------------------------------------

    async def mads(self, request: web.Request) -> web.Response:
        try:
            req = safe_yaml.load_json(await request.read() or b"{}")  # bounded nesting: no RecursionError 500
            if not isinstance(req, dict):
                raise ValueError("the body must be a DiscoveryRequest object")
            timeout = min(parse_duration(request.query.get("fetch-timeout") or DEFAULT_FETCH_TIMEOUT),
                          MAX_FETCH_TIMEOUT)
        except ValueError as e:
            return web.json_response({"title": "Could not parse the discovery request", "details": str(e)},
                                     status=400)
        node = req.get("node") or {}
        client_id = str(node.get("id") or "") if isinstance(node, dict) else ""
        known = str(req.get("version_info") or req.get("versionInfo") or "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            resources = mads_resources(await self.targets(client_id))
            version = hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]
            if version != known:
                return web.json_response({"version_info": version, "resources": resources,
                                          "type_url": MADS_TYPE_URL, "nonce": secrets.token_hex(8)})
            if loop.time() >= deadline:
                return web.Response(status=304)  # nothing changed while the client waited
            await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))


def http_sd_labels(t: Target) -> dict[str, str]:
    labels = {"__metrics_path__": t.path, "__scheme__": "http", "mesh": t.mesh, "service": t.service,
              "dataplane": t.dataplane}
    if t.zone:
        labels["zone"] = t.zone
    return labels


def mads_resources(targets: list[Target]) -> list[dict[str, Any]]:
    """One MonitoringAssignment per target, as protobuf JSON (proto field names, `@type` for the Any)."""
    out = []
    for t in targets:
        labels = {sanitize_label(k): v for k, v in sorted(t.tags.items())}
        out.append({"@type": MADS_TYPE_URL, "mesh": t.mesh, "service": t.service, "labels": labels,
                    "targets": [{"name": t.dataplane, "scheme": "http", "address": t.address,
                                 "metrics_path": t.path, "labels": {}}]})
    return out
