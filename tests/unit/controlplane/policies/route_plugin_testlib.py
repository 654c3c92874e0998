"""A small mesh for the route plugins' xDS tests: backend v1/v2 (HTTP), db primary/replica (TCP), a plain client
with outbounds and a transparent-proxy client; generation runs the whole profile with the given rules in place of
matching, so the input of each case is already-matched rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpagent.controlplane.policies.base import Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.registry import PLUGINS
from dpagent.controlplane.xds.context import MeshContext, Proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.model.dataplane import Dataplane, parse_dataplane
from dpagent.model.mesh import parse_mesh

MESH = parse_mesh({"type": "Mesh", "name": "default",
                   "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})


def _dp(name: str, address: str, service: str, protocol: str, **tags: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {"address": address, "inbound": [
        {"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol,
                                                     **tags}}]}}


SERVERS = [parse_dataplane(d) for d in (
    _dp("backend-v1", "10.0.0.2", "backend", "http", version="v1"),
    _dp("backend-v2", "10.0.0.3", "backend", "http", version="v2"),
    _dp("db-primary", "10.0.1.2", "db", "tcp", role="primary"),
    _dp("db-replica", "10.0.1.3", "db", "tcp", role="replica"),
)]
CLIENT = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
    "address": "10.0.2.2",
    "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
    "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}},
                 {"port": 10002, "tags": {"kuma.io/service": "db"}}]}})
TPROXY_CLIENT = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-2", "networking": {
    "address": "10.0.2.3",
    "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
    "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}})
CONTEXT = MeshContext(MESH, [*SERVERS, CLIENT, TPROXY_CLIENT], vips={"backend": "240.0.0.1", "db": "240.0.0.2"})


def generate_with(rules: Mapping[str, Rules], dp: Dataplane = CLIENT, ctx: MeshContext = CONTEXT) -> ResourceSet:
    """The whole profile for `dp`, every kind's rules replaced by `rules` (missing kinds: no rules)."""
    proxy = Proxy(dp, {p.kind: Matched(p.kind) for p in PLUGINS}, {p.kind: rules.get(p.kind, Rules()) for p in PLUGINS})
    return generate(ctx, dp, proxy)
