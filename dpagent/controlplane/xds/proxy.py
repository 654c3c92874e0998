"""Entry points of xDS generation: the shared, once-per-change part of a mesh and the per-proxy part.

The caller (sync/snapshot) builds `generate_shared` once per mesh change and merges its output with each proxy's
`generate_proxy` result, so a service's cluster and endpoints are serialised once and reused by every stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.protobuf.message import Message

from dpagent.controlplane.policies.meshtrafficpermission.plugin import MtpRules
from dpagent.controlplane.policies.registry import proxy_rules
from dpagent.controlplane.xds.builders.tls import mesh_ca_secret
from dpagent.controlplane.xds.generators.inbound import inbound_resources
from dpagent.controlplane.xds.generators.outbound import outbound_listeners, service_protocols, shared_clusters
from dpagent.controlplane.xds.names import MESH_CA
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh, mtls_enabled
from dpagent.model.meshtrafficpermission import KIND as MTP

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

Resources = dict[str, dict[str, Message]]


@dataclass(frozen=True)
class MeshContext:
    """Everything generation reads about one mesh. `policies` maps kind → parsed policies (or raw documents)."""

    mesh: Mesh
    dataplanes: Sequence[Dataplane] = ()
    policies: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    trust_bundle: str = ""  # PEM roots proxies of this mesh trust; pushed as the `mesh_ca` secret

    @cached_property
    def service_protocols(self) -> Mapping[str, str]:
        """Each service's protocol, computed once per context: every proxy's outbound listeners need it, and
        deriving it walks all dataplanes (O(N) per proxy, O(N²) per mesh otherwise). The context is immutable."""
        return service_protocols(self.dataplanes)


def generate_shared(ctx: MeshContext) -> Resources:
    """Per-service EDS clusters, their endpoints and the trust bundle: identical for every proxy in the mesh."""
    clusters, assignments = shared_clusters(ctx)
    out: Resources = {CLUSTER: dict(clusters), ENDPOINT: dict(assignments)}
    if mtls_enabled(ctx.mesh) and ctx.trust_bundle:
        out[SECRET] = {MESH_CA: mesh_ca_secret(ctx.trust_bundle)}
    return out


def generate_proxy(ctx: MeshContext, dp: Dataplane, *, shared: Resources) -> Resources:
    """The resources only this proxy has: its inbound listeners (+ RBAC), local clusters and outbound listeners.

    Outbound listeners reference shared clusters by name; `shared` is accepted so a caller cannot forget to build
    it first, and so a future generator can look up what exists without rebuilding it.
    """
    del shared
    mtp = proxy_rules(ctx, dp).get(MTP)
    listeners, clusters = inbound_resources(ctx, dp, mtp if isinstance(mtp, MtpRules) else MtpRules())
    listeners.update(outbound_listeners(ctx, dp, ctx.service_protocols))
    return {LISTENER: dict(sorted(listeners.items())), CLUSTER: clusters}


def proxy_warnings(ctx: MeshContext, dp: Dataplane) -> list[str]:
    """Unresolvable or widened targetRefs for `inspect`; generation never fails on them."""
    return [w for rules in proxy_rules(ctx, dp).values() for w in rules.warnings]


def merge(*parts: Resources) -> Resources:
    """Union by type then name; later parts win, which never happens between shared and per-proxy names."""
    out: Resources = {}
    for part in parts:
        for type_url, by_name in part.items():
            out.setdefault(type_url, {}).update(by_name)
    return {t: dict(sorted(by_name.items())) for t, by_name in sorted(out.items())}
