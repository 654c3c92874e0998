"""Envoy RBAC factories (principals, permissions, policies; network filter, HTTP filter, per-route config). They
know nothing about MeshTrafficPermission: its configurer decides what to allow and deny."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from dpagent.controlplane.xds.builders.core import pack

NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_RBAC = "envoy.filters.http.rbac"
ALLOW = rbac_pb2.RBAC.Action.ALLOW
DENY = rbac_pb2.RBAC.Action.DENY


def string_matcher(exact: str = "", prefix: str = "") -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(exact=exact) if exact else string_pb2.StringMatcher(prefix=prefix)


def peer(matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    """A client whose verified certificate's URI SAN (our leaves carry exactly one) matches."""
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


def any_peer() -> rbac_pb2.Principal:
    return rbac_pb2.Principal(any=True)


def sni(matcher: string_pb2.StringMatcher) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(requested_server_name=matcher)


def any_permission() -> rbac_pb2.Permission:
    return rbac_pb2.Permission(any=True)


def policy(principals: Sequence[rbac_pb2.Principal],
           permissions: Sequence[rbac_pb2.Permission] = ()) -> rbac_pb2.Policy:
    return rbac_pb2.Policy(principals=list(principals), permissions=list(permissions) or [any_permission()])


def rules(action: int, policies: Mapping[str, rbac_pb2.Policy]) -> rbac_pb2.RBAC:
    """ALLOW with no policy denies everyone; DENY with no policy lets everyone through (Envoy semantics)."""
    out = rbac_pb2.RBAC(action=action)  # type: ignore[arg-type]
    for name in sorted(policies):
        out.policies[name].CopyFrom(policies[name])
    return out


def network_filter(name: str, stat_prefix: str, enforced: rbac_pb2.RBAC,
                   shadow: rbac_pb2.RBAC | None = None) -> listener_components_pb2.Filter:
    cfg = net_rbac_pb2.RBAC(stat_prefix=stat_prefix, rules=enforced)
    if shadow is not None:
        cfg.shadow_rules.CopyFrom(shadow)
    return listener_components_pb2.Filter(name=name, typed_config=pack(cfg))


def http_filter(name: str, base: rbac_pb2.RBAC) -> hcm_pb2.HttpFilter:
    """An HTTP RBAC filter whose listener-level rules are only the fallback for a route without its own config."""
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(http_rbac_pb2.RBAC(rules=base)))


def per_route(enforced: rbac_pb2.RBAC, shadow: rbac_pb2.RBAC | None = None) -> http_rbac_pb2.RBACPerRoute:
    cfg = http_rbac_pb2.RBAC(rules=enforced)
    if shadow is not None:
        cfg.shadow_rules.CopyFrom(shadow)
    return http_rbac_pb2.RBACPerRoute(rbac=cfg)
