"""MeshHTTPRoute → each shaped destination's outbound RouteConfiguration, swapped in for the route-free one the
core generator served over RDS (so no listener changes, and open connections take the new routes at once), plus
the clusters its backends need."""

from __future__ import annotations

from collections.abc import Mapping

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshhttproute.api import KIND
from dpagent.controlplane.policies.meshhttproute.plugin import Destination
from dpagent.controlplane.policies.meshhttproute.routes import outbound_routes
from dpagent.controlplane.policies.meshroute.xds import Backend, add_backends, resolved
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import ROUTE, Resource


def _route(ctx: MeshView, name: str, service: str, dest: Destination) -> tuple[Resource, list[Backend]]:
    """Built and serialised once per (service, matched items) per mesh change, however many proxies share it."""
    def build() -> tuple[Resource, list[Backend]]:
        rc, used = outbound_routes(name, service, dest.rules, names.service_cluster(service))
        return Resource(name, rc, ROUTE), resolved(used)

    return ctx.memo((KIND, "route", name, service, dest.items), build)  # type: ignore[no-any-return]


def configure(rs: ResourceSet, ctx: MeshView, by_service: Mapping[str, Destination]) -> None:
    used: list[Backend] = []
    for entry in list(rs.entries(ROUTE, Origin.OUTBOUND)):
        dest = by_service.get(entry.service)
        if dest is None:
            continue
        resource, refs = _route(ctx, entry.name, entry.service, dest)
        rs.replace(entry, resource)
        used.extend(refs)
    add_backends(rs, ctx, used)
