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
from dpagent.controlplane.xds.dns import dns_table
from dpagent.controlplane.xds.generators.dynconf import dynconf_listener
from dpagent.controlplane.xds.generators.inbound import inbound_parts, inbound_resources
from dpagent.controlplane.xds.generators.outbound import outbound_listeners, service_protocols, shared_clusters
from dpagent.controlplane.xds.generators.transparent import (
    inbound_capture_listener,
    is_transparent,
    outbound_capture_listener,
    passthrough_clusters,
    reachable_services,
    service_addresses,
    service_ports,
    transparent_warnings,
)
from dpagent.controlplane.xds.names import (
    DYNCONF_DNS_PATH,
    DYNCONF_LISTENER,
    INBOUND_PASSTHROUGH,
    MESH_CA,
    OUTBOUND_PASSTHROUGH,
)
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
# Per-proxy listeners that are byte-identical for every proxy with the same reachable services (and ports): the
# context builds each once, and a caller may serialise each once too.
SHARED_LISTENERS = frozenset({OUTBOUND_PASSTHROUGH, DYNCONF_LISTENER})


@dataclass(frozen=True)
class MeshContext:
    """Everything generation reads about one mesh. `policies` maps kind → parsed policies (or raw documents)."""

    mesh: Mesh
    dataplanes: Sequence[Dataplane] = ()
    policies: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    trust_bundle: str = ""  # PEM roots proxies of this mesh trust; pushed as the `mesh_ca` secret
    vips: Mapping[str, str] = field(default_factory=dict)  # service → virtual IP (allocated and stored by sync)

    @cached_property
    def service_protocols(self) -> Mapping[str, str]:
        """Each service's protocol, computed once per context: every proxy's outbound listeners need it, and
        deriving it walks all dataplanes (O(N) per proxy, O(N²) per mesh otherwise). The context is immutable."""
        return service_protocols(self.dataplanes)

    @cached_property
    def service_addresses(self) -> Mapping[str, list[tuple[str, int]]]:
        return service_addresses(self.dataplanes)

    @cached_property
    def service_ports(self) -> Mapping[str, list[int]]:
        return service_ports(self.dataplanes)

    @cached_property
    def _memo(self) -> dict[tuple[Any, ...], Message]:
        return {}

    def outbound_capture(self, port: int, reachable: tuple[str, ...]) -> Message:
        """The outbound capture listener, built once per (port, reachable set) per context: with 1,000 tproxy
        proxies in a mesh it is otherwise rebuilt 1,000 times from the same inputs. Treat it as read-only."""
        key = (OUTBOUND_PASSTHROUGH, port, reachable)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = outbound_capture_listener(port, reachable, self.service_protocols, self.vips,
                                                              self.service_addresses, self.service_ports)
        return hit

    def dynconf(self, reachable: tuple[str, ...]) -> Message:
        """The agent's dynconf listener (DNS table of the reachable services), once per reachable set."""
        key = (DYNCONF_LISTENER, reachable)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = dynconf_listener({DYNCONF_DNS_PATH: dns_table(self.vips, reachable)})
        return hit


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
    found = proxy_rules(ctx, dp).get(MTP)
    mtp = found if isinstance(found, MtpRules) else MtpRules()
    if is_transparent(dp):
        listeners, clusters = _transparent(ctx, dp, mtp)
    else:
        listeners, clusters = inbound_resources(ctx, dp, mtp)
        listeners.update(outbound_listeners(ctx, dp, ctx.service_protocols))
    return {LISTENER: dict(sorted(listeners.items())), CLUSTER: dict(sorted(clusters.items()))}


def _transparent(ctx: MeshContext, dp: Dataplane, mtp: MtpRules) -> tuple[dict[str, Message], dict[str, Message]]:
    """Capture listeners instead of per-inbound/per-outbound ones: under tproxy the inbound port is the app's own
    port (Envoy cannot bind it) and outbounds are ignored (Kuma rejects them)."""
    tp = dp.networking.transparent_proxying
    assert tp is not None
    parts = inbound_parts(ctx, dp, mtp, transparent=True)
    clusters: dict[str, Message] = {p.cluster.name: p.cluster for p in parts}
    clusters.update(passthrough_clusters())
    reachable = tuple(wanted_services(ctx, dp))
    listeners: dict[str, Message] = {
        INBOUND_PASSTHROUGH: inbound_capture_listener(tp.redirect_port_inbound, parts),
        OUTBOUND_PASSTHROUGH: ctx.outbound_capture(tp.redirect_port_outbound, reachable),
        DYNCONF_LISTENER: ctx.dynconf(reachable),
    }
    return listeners, clusters


def wanted_services(ctx: MeshContext, dp: Dataplane) -> list[str]:
    """Services whose shared cluster and endpoints this proxy receives: its outbounds, or under tproxy its reachable
    services (all of the mesh's unless `reachableServices` narrows them)."""
    return reachable_services(dp, ctx.service_protocols)


def proxy_warnings(ctx: MeshContext, dp: Dataplane) -> list[str]:
    """Unresolvable or widened targetRefs for `inspect`; generation never fails on them."""
    return [w for rules in proxy_rules(ctx, dp).values() for w in rules.warnings] + transparent_warnings(dp)


def merge(*parts: Resources) -> Resources:
    """Union by type then name; later parts win, which never happens between shared and per-proxy names."""
    out: Resources = {}
    for part in parts:
        for type_url, by_name in part.items():
            out.setdefault(type_url, {}).update(by_name)
    return {t: dict(sorted(by_name.items())) for t, by_name in sorted(out.items())}
