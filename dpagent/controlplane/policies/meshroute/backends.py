"""From backendRefs to Envoy: the cluster a backendRef resolves to, the endpoints of a tag subset, and the EDS
clusters and ClusterLoadAssignments a route's backends need.

Only legacy destinations resolve today (a `kuma.io/service` name, optionally narrowed by tags): this CP has no
MeshService, MeshExternalService or MeshMultiZoneService resources yet, so such refs resolve to None and the
route builders drop them as Kuma drops an unresolvable backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from dpagent.controlplane.policies.meshroute.names import resolve_legacy
from dpagent.controlplane.policies.meshroute.refs import MESH_SERVICE_SUBSET, BackendRef
from dpagent.controlplane.xds.builders import cluster as cb
from dpagent.controlplane.xds.builders.listener import HTTP2_PROTOCOLS
from dpagent.controlplane.xds.builders.tls import upstream_tls
from dpagent.controlplane.xds.generators.outbound import serving
from dpagent.model.dataplane import Dataplane
from dpagent.model.validation import is_ip


def subset_endpoints(dataplanes: Iterable[Dataplane], service: str,
                     tags: Mapping[str, str]) -> list[tuple[str, int]]:
    """The ready inbounds of `service` whose tags include every one of `tags`. Hostname addresses are skipped, as
    for whole services: EDS needs IPs."""
    out: set[tuple[str, int]] = set()
    for dp in dataplanes:
        for ib in dp.networking.inbound:
            if ib.service != service or any(ib.tags.get(k) != v for k, v in tags.items()):
                continue
            address = ib.address or dp.networking.address
            if serving(ib) and is_ip(address):
                out.add((address, ib.port))
    return sorted(out)


def backend_resources(refs: Iterable[BackendRef], dataplanes: Sequence[Dataplane], *, mesh: str, mtls: bool,
                      protocols: Mapping[str, str]) -> tuple[dict[str, cluster_pb2.Cluster],
                                                             dict[str, endpoint_pb2.ClusterLoadAssignment]]:
    """One EDS cluster and one ClusterLoadAssignment per distinct resolvable backend, keyed by cluster name.

    A subset cluster speaks to the same workloads as its service, so it uses the service's protocol and, with
    mTLS, verifies the service's identity. `protocols` maps service → Kuma protocol (`tcp` when unknown).
    """
    clusters: dict[str, cluster_pb2.Cluster] = {}
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for ref in refs:
        name = resolve_legacy(ref)
        if name is None or name in clusters:
            continue
        tls = upstream_tls(mesh, ref.name) if mtls else None
        clusters[name] = cb.eds_cluster(name, http2=protocols.get(ref.name, "tcp") in HTTP2_PROTOCOLS, tls=tls)
        tags = ref.tags if ref.kind == MESH_SERVICE_SUBSET else {}
        assignments[name] = cb.load_assignment(name, subset_endpoints(dataplanes, ref.name, tags))
    return dict(sorted(clusters.items())), dict(sorted(assignments.items()))
