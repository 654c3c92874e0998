"""MeshTCPRoute → the tcp_proxy of each shaped destination's outbound: its own outbound listener, or its chains
of the transparent-proxy capture listener (one per port it is reached on). An HTTP destination is only turned into
plain L4 when no MeshHTTPRoute shapes it (§3). A tcp_proxy is read once per connection, so a change here replaces
the listener (its chains drain), as it must."""

from __future__ import annotations

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.meshroute.refs import BackendRef
from dpagent.controlplane.policies.meshroute.xds import add_backends, protocols, resolved
from dpagent.controlplane.policies.meshtcproute.plugin import TcpRouteRules
from dpagent.controlplane.policies.meshtcproute.tcp import outbound_tcp_proxy, uses_tcp_route
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.generators.transparent import VIP_PORT, service_ports
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER


def configure(rs: ResourceSet, ctx: MeshView, rules: TcpRouteRules) -> None:
    kinds = protocols(ctx)
    shaped = {s: lists for s, lists in rules.by_service.items()
              if uses_tcp_route(kinds.get(s, "tcp"), s in rules.http_routed, True)}
    if not shaped:
        return
    used: list[BackendRef] = []
    for entry in list(rs.entries(LISTENER, Origin.OUTBOUND)):
        lists = shaped.get(entry.service)
        if lists is None:
            continue
        proxy, refs = outbound_tcp_proxy(names.stat_prefix(entry.name), lists, names.service_cluster(entry.service))
        if proxy is not None:
            for chain in rs.edit(entry).filter_chains:  # type: ignore[attr-defined]
                del chain.filters[:]
                chain.filters.append(proxy)
            used.extend(refs)
    capture = rs.get(LISTENER, names.OUTBOUND_PASSTHROUGH)
    if capture is not None:
        ports = ctx.dp_memo(("meshroute", "ports"), lambda: service_ports(ctx.dataplanes))
        chains = {names.outbound_chain(s, p): s for s in shaped for p in {VIP_PORT, *ports.get(s, ())}}
        listener = capture.message
        for index, chain in enumerate(listener.filter_chains):  # type: ignore[attr-defined]
            service = chains.get(chain.name)
            if service is None:
                continue
            proxy, refs = outbound_tcp_proxy(names.stat_prefix(chain.name), shaped[service],
                                             names.service_cluster(service))
            if proxy is not None:
                listener = rs.edit(capture)
                target = listener.filter_chains[index]  # type: ignore[attr-defined]
                del target.filters[:]
                target.filters.append(proxy)
                used.extend(refs)
    add_backends(rs, ctx, resolved(used))
