"""RBAC filters from a resolved (action, principal services) pair; one network and one HTTP flavour."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.core import pack

NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_RBAC = "envoy.filters.http.rbac"


def rbac_rules(mesh: str, action: str, services: Sequence[str]) -> rbac_pb2.RBAC:
    """ALLOW with an empty list denies everyone; DENY with an empty list lets everyone through (Envoy semantics)."""
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.Action.Value(action))
    if services:
        principals = [rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(exact=names.spiffe_id(mesh, s)))) for s in sorted(services)]
        rules.policies[names.RBAC_POLICY].CopyFrom(rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)], principals=principals))
    return rules


def network_rbac(stat_prefix: str, rules: rbac_pb2.RBAC,
                 shadow: rbac_pb2.RBAC | None = None) -> listener_components_pb2.Filter:
    cfg = net_rbac_pb2.RBAC(stat_prefix=stat_prefix, rules=rules)
    if shadow is not None:
        cfg.shadow_rules.CopyFrom(shadow)
    return listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=pack(cfg))


def http_rbac(rules: rbac_pb2.RBAC, shadow: rbac_pb2.RBAC | None = None) -> hcm_pb2.HttpFilter:
    cfg = http_rbac_pb2.RBAC(rules=rules)
    if shadow is not None:
        cfg.shadow_rules.CopyFrom(shadow)
    return hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=pack(cfg))
