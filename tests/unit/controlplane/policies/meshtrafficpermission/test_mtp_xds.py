"""MeshTrafficPermission's xDS step on its own: already-matched permissions in, RBAC on the inbound listener and
route out, one golden per (case, resource kind), each also validated by the real Envoy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policylib import BACKEND_DP, BACKEND_HTTP, BACKEND_TCP, MTLS_MESH
from unit.controlplane.xds._xds_testlib import (
    assert_golden,
    envoy_accepts,
    resources_to_plain,
)

from dpagent.controlplane.policies.meshtrafficpermission.api import Match, StringMatch
from dpagent.controlplane.policies.meshtrafficpermission.plugin import (
    InboundPermissions,
    MeshTrafficPermissionPlugin,
    MtpRules,
    PeerRule,
)
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.controlplane.xds.context import MeshContext, Proxy
from dpagent.controlplane.xds.generators.inbound import InboundGenerator
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

TESTDATA = Path(__file__).parent / "testdata"
MESH, DP, HTTP, TCP = MTLS_MESH, BACKEND_DP, BACKEND_HTTP, BACKEND_TCP


def peer(kind: str, action: str, services: frozenset[str] | None, name: str = "") -> PeerRule:
    return PeerRule(TargetRef(kind, name), action, services, "p")


def spiffe(kind: str, value: str, sni: str = "") -> Match:
    return Match(spiffe_id=StringMatch(kind, value), sni=StringMatch("Exact", sni) if sni else None)


RULES_FORM = InboundPermissions(
    deny=(spiffe("Prefix", "spiffe://default/job"),),
    allow=(spiffe("Exact", "spiffe://default/web"), Match(sni=StringMatch("Exact", "backend.mesh"))),
    shadow=(spiffe("Prefix", "spiffe://default/", sni="backend.mesh"),))

# case → permissions per inbound (the input is already-matched rules, so the matcher is not under test here)
CASES: dict[str, dict[str, InboundPermissions]] = {
    "no_permission_denies_all": {},
    "from_allow_one_service": {HTTP: InboundPermissions((peer("MeshService", "Allow", frozenset({"web"}), "web"),)),
                               TCP: InboundPermissions((peer("MeshService", "Allow", frozenset({"web"}), "web"),))},
    "from_allow_all_shadow_deny_one": {
        HTTP: InboundPermissions((peer("MeshService", "Deny", frozenset({"job"}), "job"),
                                  peer("Mesh", "AllowWithShadowDeny", None)))},
    "rules_spiffe_and_sni": {HTTP: RULES_FORM, TCP: RULES_FORM},
}


def _apply(case: str) -> ResourceSet:
    ctx = MeshContext(MESH, [DP])
    rs = ResourceSet()
    InboundGenerator().generate(rs, ctx, Proxy(DP, {}, {}))
    MeshTrafficPermissionPlugin().apply(rs, ctx, DP, MtpRules(enforced=True, inbounds=CASES[case]))
    return rs


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", ["listener", "route"])
def test_golden(case: str, kind: str) -> None:
    type_url = {"listener": LISTENER, "route": ROUTE}[kind]
    resources = {type_url: _apply(case).messages()[type_url]}
    assert_golden(resources_to_plain(resources), f"{case}_{kind}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(_apply(case).messages(), tmp_path, "spiffe://default/backend")


def test_mtls_off_leaves_resources_alone() -> None:
    ctx = MeshContext(MESH, [DP])
    rs = ResourceSet()
    InboundGenerator().generate(rs, ctx, Proxy(DP, {}, {}))
    before = {t: {n: m.SerializeToString() for n, m in by.items()} for t, by in rs.messages().items()}
    MeshTrafficPermissionPlugin().apply(rs, ctx, DP, MtpRules(enforced=False))
    assert {t: {n: m.SerializeToString() for n, m in by.items()} for t, by in rs.messages().items()} == before


def test_permission_change_touches_the_route_not_the_http_listener() -> None:
    """What makes a permission change reach live HTTP connections: the listener bytes do not move."""
    allow = _apply("from_allow_one_service").messages()
    deny = _apply("no_permission_denies_all").messages()
    http_listener = "inbound:10.0.0.2:8080"
    assert allow[LISTENER][http_listener].SerializeToString(deterministic=True) == \
        deny[LISTENER][http_listener].SerializeToString(deterministic=True)
    assert allow[ROUTE][http_listener] != deny[ROUTE][http_listener]


def test_under_transparent_proxy_a_permission_change_also_moves_only_the_route() -> None:
    """The tproxy capture listener carries every inbound's chain; an Allow → Deny flip must not replace it either,
    or its open connections would drain under the old rules."""
    from dpagent.controlplane.xds.generators.profile import generate
    from dpagent.controlplane.xds.sync import build_mesh_state

    mesh = {"type": "Mesh", "name": "default",
            "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}}
    dp = {"type": "Dataplane", "mesh": "default", "name": "b", "networking": {
        "address": "10.0.0.2", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend",
                                                                  "kuma.io/protocol": "http"}}],
        "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}}

    def generated(action: str) -> dict[str, dict[str, bytes]]:
        policy = {"type": "MeshTrafficPermission", "mesh": "default", "name": "p", "spec": {
            "targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": action}}]}}
        state = build_mesh_state(mesh, [dp], {"MeshTrafficPermission": [policy]}, trust_bundle="bundle")
        msgs = generate(state.ctx, state.by_name["b"]).messages()
        return {t: {n: m.SerializeToString(deterministic=True) for n, m in msgs[t].items()} for t in (LISTENER, ROUTE)}

    allow, deny = generated("Allow"), generated("Deny")
    assert allow[LISTENER] == deny[LISTENER] and len(allow[LISTENER]) >= 2
    assert [n for n in allow[ROUTE] if allow[ROUTE][n] != deny[ROUTE].get(n)] == ["inbound:10.0.0.2:8080"]
