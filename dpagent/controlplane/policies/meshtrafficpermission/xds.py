"""MeshTrafficPermission → Envoy RBAC on each inbound: two filters, a DENY one (the denied peers) then an ALLOW
one (the allowed peers; nobody else gets through).

HTTP inbounds carry both filters in their HCM with fixed listener-level config (deny nobody / allow nobody) and
get the real rules per route (`typed_per_filter_config`) in their RDS route configuration: a permission change is
then a route update that applies to the next request on an already-open connection, and the listener (and its
connections) is never replaced. TCP inbounds get network RBAC filters in their filter chain, which Envoy
evaluates once per connection, so a change there drains that chain as it must.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from dpagent.controlplane.policies.meshtrafficpermission.api import EXACT, Match
from dpagent.controlplane.policies.meshtrafficpermission.plugin import InboundPermissions
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders import rbac
from dpagent.controlplane.xds.builders.core import pack
from dpagent.controlplane.xds.builders.listener import hcm_index
from dpagent.controlplane.xds.builders.permissive import is_plaintext
from dpagent.controlplane.xds.resources import Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

DENY_FILTER = "dpagent.mtp.deny"
ALLOW_FILTER = "dpagent.mtp.allow"

Policies = dict[str, rbac_pb2.Policy]


def _match_policy(m: Match) -> rbac_pb2.Policy:
    principals = [rbac.any_peer()]
    if m.spiffe_id is not None:
        value = m.spiffe_id.value
        principals = [rbac.peer(rbac.string_matcher(exact=value) if m.spiffe_id.type == EXACT
                                else rbac.string_matcher(prefix=value))]
    permissions = [rbac.sni(rbac.string_matcher(exact=m.sni.value))] if m.sni is not None else []
    return rbac.policy(principals, permissions)


def _service_peers(mesh: str, services: tuple[str, ...]) -> list[rbac_pb2.Principal]:
    return [rbac.peer(rbac.string_matcher(exact=names.spiffe_id(mesh, s))) for s in services]


def decisions(mesh: str, perm: InboundPermissions, shadow: bool = False) -> tuple[rbac_pb2.RBAC, rbac_pb2.RBAC]:
    """(DENY rules, ALLOW rules) for one inbound. shadow=True: what the shadow rules should log, i.e. with every
    AllowWithShadowDeny treated as a Deny."""
    deny: Policies = {}
    allow: Policies = {}
    if perm.rules:
        by_default, exceptions = perm.legacy(shadow)
        if by_default:
            allow["from"] = rbac.policy([rbac.any_peer()])
            if exceptions:
                deny["from"] = rbac.policy(_service_peers(mesh, exceptions))
        elif exceptions:
            allow["from"] = rbac.policy(_service_peers(mesh, exceptions))
    for i, m in enumerate(perm.deny):
        deny[f"rules.deny.{i}"] = _match_policy(m)
    for i, m in enumerate(perm.allow):
        allow[f"rules.allow.{i}"] = _match_policy(m)
    for i, m in enumerate(perm.shadow):
        (deny if shadow else allow)[f"rules.allowWithShadowDeny.{i}"] = _match_policy(m)
    return rbac.rules(rbac.DENY, deny), rbac.rules(rbac.ALLOW, allow)


def _both(mesh: str, perm: InboundPermissions) -> tuple[tuple[rbac_pb2.RBAC, rbac_pb2.RBAC],
                                                        tuple[rbac_pb2.RBAC | None, rbac_pb2.RBAC | None]]:
    enforced = decisions(mesh, perm)
    if not perm.has_shadow():
        return enforced, (None, None)
    return enforced, decisions(mesh, perm, shadow=True)


def configure(rs: ResourceSet, mesh: str, inbounds: Mapping[str, InboundPermissions]) -> None:
    """Add RBAC to every inbound filter chain (listener or capture chain) and every inbound route; an inbound the
    rules do not mention gets no permission at all (deny by default)."""
    for entry, index, key in list(rs.inbound_chains(LISTENER)):
        if is_plaintext(entry.message.filter_chains[index]):  # type: ignore[attr-defined]
            continue  # Permissive: a client outside the mesh has no identity to check (Kuma lets it through too)
        listener = rs.edit(entry)
        chain = listener.filter_chains[index]  # type: ignore[attr-defined]
        at = hcm_index(chain)  # not always first: MeshRateLimit may prepend a TCP connection limit
        if at is not None:
            hcm = hcm_pb2.HttpConnectionManager()
            chain.filters[at].typed_config.Unpack(hcm)
            fixed = [rbac.http_filter(DENY_FILTER, rbac.rules(rbac.DENY, {})),
                     rbac.http_filter(ALLOW_FILTER, rbac.rules(rbac.ALLOW, {}))]
            filters = [*fixed, *hcm.http_filters]
            del hcm.http_filters[:]
            hcm.http_filters.extend(filters)
            chain.filters[at].typed_config.CopyFrom(pack(hcm))
            continue
        (deny, allow), (deny_shadow, allow_shadow) = _both(mesh, inbounds.get(key, InboundPermissions()))
        stat = names.stat_prefix(chain.name or entry.name)
        extra = [rbac.network_filter(rbac.NETWORK_RBAC, f"{stat}.mtp_deny.", deny, deny_shadow),
                 rbac.network_filter(rbac.NETWORK_RBAC, f"{stat}.mtp_allow.", allow, allow_shadow)]
        filters = [*extra, *chain.filters]
        del chain.filters[:]
        chain.filters.extend(filters)
    for entry in list(rs.entries(ROUTE, Origin.INBOUND)):
        (deny, allow), (deny_shadow, allow_shadow) = _both(mesh, inbounds.get(entry.inbound, InboundPermissions()))
        route_config = rs.edit(entry)
        for vhost in route_config.virtual_hosts:  # type: ignore[attr-defined]
            for route in vhost.routes:
                route.typed_per_filter_config[DENY_FILTER].CopyFrom(pack(rbac.per_route(deny, deny_shadow)))
                route.typed_per_filter_config[ALLOW_FILTER].CopyFrom(pack(rbac.per_route(allow, allow_shadow)))
