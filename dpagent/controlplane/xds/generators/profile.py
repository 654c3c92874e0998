"""The generator profile: the ordered list of core generators that fill one proxy's ResourceSet, then every policy
plugin's `apply` in registry order. Reading PROFILE top to bottom is reading the whole pipeline.

Core generators know no policy; they tag what they make with an origin (and the inbound or service it serves)
so plugins can find it.
"""

from __future__ import annotations

import json
from typing import Protocol

from dpagent.controlplane.policies.registry import PLUGINS
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import listener as lb
from dpagent.controlplane.xds.builders.permissive import make_permissive
from dpagent.controlplane.xds.context import MeshContext, Proxy, build_proxy
from dpagent.controlplane.xds.generators.direct_access import DirectAccessGenerator
from dpagent.controlplane.xds.generators.dynconf import set_dynconf_route
from dpagent.controlplane.xds.generators.inbound import InboundGenerator, inbound_parts
from dpagent.controlplane.xds.generators.outbound import outbound_filter
from dpagent.controlplane.xds.generators.transparent import (
    captures_ipv6,
    inbound_capture_listener,
    is_transparent,
    passthrough_clusters,
    reachable_services,
)
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import enabled_backend, mtls_permissive


class Generator(Protocol):
    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None: ...


def wanted_services(ctx: MeshContext, dp: Dataplane) -> list[str]:
    """Services whose shared cluster and endpoints this proxy receives: its outbounds, or under tproxy its reachable
    services (all of the mesh's unless `reachableServices` narrows them)."""
    return reachable_services(dp, ctx.service_protocols)


class SharedServicesGenerator:
    """The mesh-wide cluster + endpoints (+ route-free RDS route, HTTP services) of every service the proxy calls,
    as the shared serialised Resources, and the mesh trust bundle."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        shared = ctx.shared_resources
        for service in wanted_services(ctx, proxy.dp):
            cluster = names.service_cluster(service)
            for type_url, name in ((CLUSTER, cluster), (ENDPOINT, cluster), (ROUTE, names.outbound_route(service))):
                res = shared.get(type_url, {}).get(name)
                if res is not None:
                    rs.add(type_url, name, res, Origin.OUTBOUND, service=service)
        for name, res in shared.get(SECRET, {}).items():
            rs.add(SECRET, name, res, Origin.SECRETS)


class OutboundListenersGenerator:
    """One listener per `outbound` entry (no transparent proxy)."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        if is_transparent(proxy.dp):
            return
        protocols = ctx.service_protocols
        for ob in proxy.dp.networking.outbound:
            name = names.outbound_listener(ob.address, ob.port)
            if rs.get(LISTENER, name) is None:
                # Shared: every proxy that calls a service on the same address and port (Kuma's usual layout) gets
                # the same listener bytes, and plugins that edit it memoise their copies (ctx.shared) the same way.
                key = (LISTENER, name, ob.service, protocols.get(ob.service, "tcp"))
                rs.add(LISTENER, name, ctx.dp_shared(key, LISTENER, name, lambda n=name, o=ob: lb.listener(
                    n, o.address, o.port, lb.OUTBOUND, [outbound_filter(n, o.service, protocols)])),
                       Origin.OUTBOUND, service=ob.service)


class TransparentGenerator:
    """Capture listeners instead of per-inbound/per-outbound ones: under tproxy the inbound port is the app's own
    port (Envoy cannot bind it) and outbounds are ignored (Kuma rejects them). The outbound capture and dynconf
    listeners are the same for every proxy with the same reachable set, so they come shared from the context."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        tp = proxy.dp.networking.transparent_proxying
        if tp is None:
            return
        parts = inbound_parts(ctx, proxy.dp, transparent=True)
        seen_ports: set[int] = set()
        chains = {}
        for p in parts:
            if p.port not in seen_ports:
                seen_ports.add(p.port)
                chains[p.name] = p.key
        ipv6 = captures_ipv6(proxy.dp)
        capture = inbound_capture_listener(tp.redirect_port_inbound, parts, ipv6=ipv6)
        if mtls_permissive(ctx.mesh):
            added = make_permissive(capture, set(chains))
            chains.update({plain: chains[mesh_chain] for plain, mesh_chain in added.items()})
        rs.add(LISTENER, names.INBOUND_PASSTHROUGH, capture, Origin.TRANSPARENT, chains=chains)
        for name, cluster in passthrough_clusters().items():
            rs.add(CLUSTER, name, cluster, Origin.TRANSPARENT)
        reachable = tuple(wanted_services(ctx, proxy.dp))
        rs.add(LISTENER, names.OUTBOUND_PASSTHROUGH, ctx.outbound_capture(tp.redirect_port_outbound, reachable, ipv6),
               Origin.TRANSPARENT)
        rs.add(LISTENER, names.DYNCONF_LISTENER, ctx.dynconf(reachable), Origin.DYNCONF)


class IdentityGenerator:
    """With mTLS on, tell the agent which CA backend is enabled (dynconf `/identity`): an agent that started while
    mTLS was off holds a placeholder certificate and would otherwise notice only at its next slow re-check, while
    its peers already demand a mesh certificate."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        backend = enabled_backend(ctx.mesh)
        if backend is not None:
            set_dynconf_route(rs, ctx, names.DYNCONF_IDENTITY_PATH,
                              json.dumps({"mesh": ctx.mesh.name, "backend": backend.name}).encode())


class PolicyGenerator:
    """Every policy plugin's `apply`, in registry (Kuma) order, over the same ResourceSet."""

    def generate(self, rs: ResourceSet, ctx: MeshContext, proxy: Proxy) -> None:
        for plugin in PLUGINS:
            try:
                plugin.apply(rs, ctx, proxy.dp, proxy.rules[plugin.kind])
            except Exception as e:
                raise RuntimeError(f"policy plugin {plugin.kind} failed: {e}") from e


PROFILE: tuple[Generator, ...] = (
    SharedServicesGenerator(),
    InboundGenerator(),
    OutboundListenersGenerator(),
    TransparentGenerator(),
    DirectAccessGenerator(),
    IdentityGenerator(),
    PolicyGenerator(),
)


def generate(ctx: MeshContext, dp: Dataplane, proxy: Proxy | None = None) -> ResourceSet:
    """Run the profile for one proxy."""
    proxy = proxy or build_proxy(ctx, dp)
    rs = ResourceSet()
    for gen in PROFILE:
        gen.generate(rs, ctx, proxy)
    return rs
