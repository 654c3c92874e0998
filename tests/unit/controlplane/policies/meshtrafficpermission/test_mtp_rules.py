"""MeshTrafficPermission semantics: matching, most-specific-wins, subset widening, deny by default, merge."""

from __future__ import annotations

from typing import Any

from dpagent.controlplane.policies.merge import merge_confs, merge_patch
from dpagent.controlplane.policies.meshtrafficpermission.plugin import MtpRules
from dpagent.controlplane.policies.registry import PLUGINS, plugin_for
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

MESH_ON = parse_mesh({"type": "Mesh", "name": "default",
                      "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})
MESH_OFF = parse_mesh({"type": "Mesh", "name": "default"})


def dp(name: str, service: str, port: int = 80, **tags: str) -> Any:
    return parse_dataplane({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": service, **tags}}]}})


def mtp(name: str, target: dict[str, Any], *rules: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": {
        "targetRef": target, "from": [{"targetRef": r, "default": {"action": a}} for r, a in rules]}}


BACKEND = dp("backend-1", "backend")
DPS = [BACKEND, dp("web-1", "web", version="v1"), dp("web-2", "web", version="v2"), dp("job-1", "job", version="v2")]


def rules(policies: list[dict[str, Any]], mesh: Any = MESH_ON) -> MtpRules:
    out = build_proxy(MeshContext(mesh, DPS, {"MeshTrafficPermission": policies}), BACKEND).rules[
        "MeshTrafficPermission"]
    assert isinstance(out, MtpRules)
    return out


def perm(r: MtpRules) -> Any:
    p = r.for_inbound("10.0.0.1:80")
    assert p is not None
    return p


def test_registry_order() -> None:
    """Kuma's order: the route kinds (100, 200) build outbounds before permissions (1100) edit inbounds."""
    assert [p.order for p in PLUGINS] == sorted(p.order for p in PLUGINS)
    mtp = plugin_for("MeshTrafficPermission")
    assert mtp is not None and mtp.order == 1100 and mtp in PLUGINS and plugin_for("Nope") is None


def test_mtls_off_not_enforced() -> None:
    r = rules([mtp("deny", {"kind": "Mesh"}, ({"kind": "Mesh"}, "Deny"))], MESH_OFF)
    assert not r.enforced and r.for_inbound("10.0.0.1:80") is None


def test_default_deny() -> None:
    p = perm(rules([]))
    assert p.action_for("web") == "Deny" and p.legacy() == (False, ())


def test_policy_for_other_service_does_not_apply() -> None:
    p = perm(rules([mtp("a", {"kind": "MeshService", "name": "web"}, ({"kind": "Mesh"}, "Allow"))]))
    assert p.legacy() == (False, ())


def test_most_specific_from_wins_over_policy_order() -> None:
    p = perm(rules([mtp("a", {"kind": "MeshService", "name": "backend"}, ({"kind": "Mesh"}, "Deny")),
                    mtp("b", {"kind": "Mesh"}, ({"kind": "MeshService", "name": "web"}, "Allow"))]))
    assert p.action_for("web") == "Allow" and p.action_for("job") == "Deny"
    assert p.legacy() == (False, ("web",))


def test_more_specific_policy_overrides_same_from() -> None:
    p = perm(rules([mtp("a", {"kind": "Mesh"}, ({"kind": "Mesh"}, "Allow")),
                    mtp("b", {"kind": "MeshService", "name": "backend"}, ({"kind": "Mesh"}, "Deny"))]))
    assert p.default_action() == "Deny"


def test_subset_resolves_to_services_with_warning() -> None:
    r = rules([mtp("s", {"kind": "Mesh"}, ({"kind": "MeshSubset", "tags": {"version": "v2"}}, "Allow"),
                   ({"kind": "MeshServiceSubset", "name": "job", "tags": {"version": "v2"}}, "Deny"),
                   ({"kind": "MeshSubset", "tags": {"zone": "nowhere"}}, "Allow"))])
    p = perm(r)
    assert p.legacy() == (False, ("web",))  # web-2 has v2 → all of web; job denied by the more specific rule
    assert any("resolved to services [job, web]" in w for w in r.warnings)
    assert any("matches no dataplane" in w for w in r.warnings)
    assert r.enforced and p.rules[0].action == "Deny" and p.rules[0].policy == "s"


def test_allow_all_with_deny_exceptions_and_shadow() -> None:
    p = perm(rules([mtp("a", {"kind": "Mesh"}, ({"kind": "Mesh"}, "AllowWithShadowDeny"),
                        ({"kind": "MeshService", "name": "job"}, "Deny"))]))
    assert p.legacy() == (True, ("job",))
    assert p.has_shadow() and p.legacy(shadow=True) == (False, ())


def test_merge_patch_rfc7396() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == \
        {"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}
    assert merge_patch({"a": 1}, "x") == "x"
    assert merge_confs([{"t": "1s", "r": 3}, {"t": "2s"}, {"r": None}]) == {"t": "2s"}


# ---- Kuma 2.10+/2.12 forms: Dataplane targetRef with labels/sectionName, rules[] with SPIFFE matches ----------

TWO = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "backend-2", "labels": {"app": "backend"},
                       "networking": {"address": "10.0.0.9", "inbound": [
                           {"port": 80, "name": "main", "tags": {"kuma.io/service": "backend"}},
                           {"port": 9000, "tags": {"kuma.io/service": "backend-admin"}}]}})


def rules_on(policies: list[dict[str, Any]], dp: Any = TWO) -> MtpRules:
    out = build_proxy(MeshContext(MESH_ON, [*DPS, dp], {"MeshTrafficPermission": policies}), dp).rules[
        "MeshTrafficPermission"]
    assert isinstance(out, MtpRules)
    return out


def spiffe_rule(name: str, target: dict[str, Any], **lists: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name,
            "spec": {"targetRef": target, "rules": [{"default": lists}]}}


def exact(value: str) -> dict[str, Any]:
    return {"spiffeID": {"type": "Exact", "value": value}}


def test_dataplane_labels_select_and_section_name_narrows() -> None:
    r = rules_on([
        spiffe_rule("all", {"kind": "Dataplane", "labels": {"app": "backend"}}, allow=[exact("spiffe://default/web")]),
        spiffe_rule("admin", {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "9000"},
                    deny=[{"spiffeID": {"type": "Prefix", "value": "spiffe://default/"}}]),
        spiffe_rule("other", {"kind": "Dataplane", "labels": {"app": "frontend"}}, allow=[exact("spiffe://x/y")])])
    main, admin = r.for_inbound("10.0.0.9:80"), r.for_inbound("10.0.0.9:9000")
    assert main is not None and admin is not None
    assert [m.spiffe_id.value for m in main.allow if m.spiffe_id] == ["spiffe://default/web"] and not main.deny
    assert main.policies == ("all",)
    assert [m.spiffe_id.type for m in admin.deny if m.spiffe_id] == ["Prefix"]
    assert admin.policies == ("all", "admin")  # labels < labels+sectionName in priority


def test_section_name_matches_inbound_name_before_port() -> None:
    r = rules_on([spiffe_rule("n", {"kind": "Dataplane", "sectionName": "main"},
                              allow=[exact("spiffe://default/web")]),
                  spiffe_rule("p", {"kind": "Dataplane", "sectionName": "80"}, allow=[exact("spiffe://default/x")])])
    main = r.for_inbound("10.0.0.9:80")
    assert main is not None and main.policies == ("n",)  # a named inbound is not addressed by its port number


def test_rules_of_every_policy_are_concatenated_and_from_still_applies() -> None:
    r = rules_on([
        spiffe_rule("a", {"kind": "Mesh"}, allow=[exact("spiffe://default/web")]),
        spiffe_rule("b", {"kind": "Dataplane", "name": "backend-2"}, deny=[exact("spiffe://default/web")],
                    allowWithShadowDeny=[exact("spiffe://default/job")]),
        mtp("c", {"kind": "Mesh"}, ({"kind": "MeshService", "name": "job"}, "Allow"))])
    p = r.for_inbound("10.0.0.9:80")
    assert p is not None
    assert [len(p.allow), len(p.deny), len(p.shadow)] == [1, 1, 1] and p.has_shadow()
    assert p.legacy() == (False, ("job",))


def test_dataplane_name_must_equal_the_dataplane() -> None:
    r = rules_on([spiffe_rule("x", {"kind": "Dataplane", "name": "backend-1"}, allow=[exact("spiffe://default/a")])])
    p = r.for_inbound("10.0.0.9:80")
    assert p is not None and p.policies == () and not p.allow
