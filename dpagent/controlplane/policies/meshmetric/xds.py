"""Pure Envoy builders for MeshMetric: one listener per Prometheus backend on the dataplane's address that hands
every scrape to the agent's metrics hijacker socket, and the `/meshmetric` dynconf route carrying the merged conf
(the agent filters Envoy's stats and scrapes the applications itself)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.policies.meshmetric.api import OPEN_TELEMETRY, PROMETHEUS, Conf, Prometheus
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.controlplane.xds.generators.dynconf import add_dynconf_route, dynconf_listener
from dpagent.controlplane.xds.resources import Origin
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER

if TYPE_CHECKING:
    from dpagent.controlplane.policies.base import MeshView
    from dpagent.controlplane.xds.resources import ResourceSet
    from dpagent.model.dataplane import Dataplane

SCRAPE_TIMEOUT = 10.0  # Envoy's route timeout for a scrape; the agent answers within its own app timeout


def hijacker_cluster() -> cluster_pb2.Cluster:
    """The agent's metrics server on a Unix socket in the work dir (the path is relative to Envoy's cwd)."""
    ep = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
        address=address_pb2.Address(pipe=address_pb2.Pipe(path=names.METRICS_HIJACKER_SOCKET))))
    return cluster_pb2.Cluster(
        name=names.METRICS_HIJACKER_CLUSTER, type=cluster_pb2.Cluster.STATIC, connect_timeout=seconds(1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=names.METRICS_HIJACKER_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[ep])]))


def prometheus_listener(address: str, prom: Prometheus) -> Any:
    """`<address>:<port>` answering GET `<path>` (and below it) from the hijacker; anything else is Envoy's 404, so
    the admin API and other agent endpoints stay private."""
    name = names.prometheus_listener(prom.client_id)
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=prom.path),
        route=route_components_pb2.RouteAction(cluster=names.METRICS_HIJACKER_CLUSTER, timeout=seconds(SCRAPE_TIMEOUT)))
    cfg = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.stat_prefix(name), codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=[
            route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])]),
        http_filters=[hcm_pb2.HttpFilter(name=lb.ROUTER, typed_config=pack(router_pb2.Router()))])
    return lb.listener(name, address, prom.port, lb.INBOUND,
                       [lb.listener_components_pb2.Filter(name=lb.HCM, typed_config=pack(cfg))])


def dynconf_body(conf: Conf) -> bytes:
    """What the agent reads at `/meshmetric`: Kuma's shape (`observability.metrics.{applications, backends,
    sidecar, extraLabels}`) with every default filled in, so the agent needs no policy knowledge."""
    sidecar = conf.sidecar
    profiles = sidecar.profiles if sidecar is not None else None
    doc = {"observability": {"metrics": {
        "applications": [{"name": a.name, "path": a.path, "port": a.port, "address": a.address}
                         for a in conf.applications],
        "backends": [_backend(b) for b in conf.backends if b.type in (PROMETHEUS, OPEN_TELEMETRY)],
        "sidecar": {"includeUnused": bool(sidecar and sidecar.include_unused),
                    "profiles": msgspec.to_builtins(profiles) if profiles is not None else {}},
        "extraLabels": {},
    }}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _backend(b: Any) -> dict[str, Any]:
    if b.type == PROMETHEUS:
        p = b.prometheus or Prometheus()
        return {"type": PROMETHEUS, "name": p.client_id, "prometheus": {"port": p.port, "path": p.path}}
    return {"type": OPEN_TELEMETRY, "openTelemetry": msgspec.to_builtins(b.open_telemetry)}


def configure(rs: ResourceSet, ctx: MeshView, dp: Dataplane, conf: Conf, proms: list[Prometheus]) -> None:
    for prom in proms:
        rs.add(LISTENER, names.prometheus_listener(prom.client_id), prometheus_listener(dp.networking.address, prom),
               Origin.DYNCONF)
    if proms:
        rs.add(CLUSTER, names.METRICS_HIJACKER_CLUSTER, hijacker_cluster(), Origin.DYNCONF)
    body = dynconf_body(conf)
    entry = rs.get(LISTENER, names.DYNCONF_LISTENER)
    if entry is None:  # no transparent proxy: no DNS table, the listener carries MeshMetric alone
        shared = ctx.memo((names.DYNCONF_LISTENER, names.DYNCONF_MESHMETRIC_PATH, body), lambda: _resource(
            dynconf_listener({names.DYNCONF_MESHMETRIC_PATH: body})))
        rs.add(LISTENER, names.DYNCONF_LISTENER, shared, Origin.DYNCONF)
        return
    if entry.shared is not None:  # every proxy with the same DNS table and conf shares one serialised listener
        base = entry.shared

        def build() -> Any:
            msg = type(base.message)()
            msg.CopyFrom(base.message)
            add_dynconf_route(msg, names.DYNCONF_MESHMETRIC_PATH, body)
            return _resource(msg)

        rs.replace(entry, ctx.memo((names.DYNCONF_LISTENER, base.digest, body), build))
        return
    add_dynconf_route(rs.edit(entry), names.DYNCONF_MESHMETRIC_PATH, body)  # type: ignore[arg-type]


def _resource(msg: Any) -> Any:
    from dpagent.controlplane.xds.snapshot import Resource

    return Resource(names.DYNCONF_LISTENER, msg, LISTENER)
