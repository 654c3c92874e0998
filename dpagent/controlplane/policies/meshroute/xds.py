"""The clusters and endpoints a route's backends need, added to one proxy's ResourceSet. Each is built and
serialised once per mesh change (memoised by cluster name, whose inputs are all mesh-wide) and shared by every
proxy that routes to it; a cluster the proxy already has (its own outbound's) is left alone."""

from __future__ import annotations

from collections.abc import Iterable

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshroute.backends import backend_resources
from dpagent.controlplane.policies.meshroute.names import resolve_legacy
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.controlplane.xds.generators.outbound import service_protocols
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, Resource
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import client_mtls


def mesh_protocols(ctx: MeshView) -> dict[str, str]:
    """The mesh services' protocols (from the dataplanes only)."""
    return ctx.dp_memo(("meshroute", "protocols"), lambda: service_protocols(ctx.dataplanes))  # type: ignore[no-any-return]


def protocols(ctx: MeshView) -> dict[str, str]:
    """Every destination's protocol: the mesh services' and the MeshExternalServices' (keyed `extsvc/<name>`)."""
    base = mesh_protocols(ctx)
    external = ctx.external_services
    if not external:
        return base
    return ctx.memo(("meshroute", "protocols+extsvc"),  # type: ignore[no-any-return]
                    lambda: {**base, **{es.key: es.protocol for es in external}})


def _by_service(ctx: MeshView) -> dict[str, list[Dataplane]]:
    """Each service's dataplanes, once per mesh change: a subset's endpoints are then found among its service's
    dataplanes instead of the whole mesh's."""
    def build() -> dict[str, list[Dataplane]]:
        out: dict[str, list[Dataplane]] = {}
        for dp in ctx.dataplanes:
            for service in {ib.service for ib in dp.networking.inbound if ib.service}:
                out.setdefault(service, []).append(dp)
        return out

    return ctx.dp_memo(("meshroute", "dataplanes-by-service"), build)  # type: ignore[no-any-return]


def _backend(ctx: MeshView, ref: BackendRef, name: str) -> tuple[Resource, Resource]:
    def build() -> tuple[Resource, Resource]:
        dataplanes = _by_service(ctx).get(ref.name, [])
        clusters, assignments = backend_resources([ref], dataplanes, mesh=ctx.mesh.name,
                                                  mtls=client_mtls(ctx.mesh), protocols=protocols(ctx))
        return Resource(name, clusters[name], CLUSTER), Resource(name, assignments[name], ENDPOINT)

    return ctx.dp_memo(("meshroute", "backend", name), build)  # type: ignore[no-any-return]


Backend = tuple[str, BackendRef]  # (cluster name, the ref it came from)


def resolved(refs: Iterable[BackendRef]) -> list[Backend]:
    """The refs that resolve, with their cluster names; callers memoise this with the route that uses them
    (resolving a subset hashes its tags, which per proxy and per ref added up)."""
    out = []
    for ref in refs:
        name = resolve_legacy(ref)
        if name is not None:
            out.append((name, ref))
    return out


def add_backends(rs: ResourceSet, ctx: MeshView, backends: Iterable[Backend]) -> None:
    for name, ref in backends:
        if rs.get(CLUSTER, name) is not None:
            continue
        cluster, endpoints = _backend(ctx, ref, name)
        rs.add(CLUSTER, name, cluster, Origin.OUTBOUND, service=ref.name)
        if rs.get(ENDPOINT, name) is None:
            rs.add(ENDPOINT, name, endpoints, Origin.OUTBOUND, service=ref.name)
