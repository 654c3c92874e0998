"""The pieces under the RBAC API: rule matching (globs, targets, `to`/`from`), the loopback setting, and the
audit retention sweep."""

from __future__ import annotations

from typing import Any

import pytest

from dpagent.controlplane.audit_retention import sweep_once
from dpagent.controlplane.rbac import Access, Authorizer, glob, parse_rules, rule_grants
from dpagent.controlplane.settings import build_cp_config
from dpagent.controlplane.store import AuditEntry, AuditQuery, MemoryStore
from dpagent.controlplane.usertokens import Principal


def rule(**kw: Any) -> Any:
    return parse_rules({"rules": [{"access": ["CREATE"], **kw}]})[0]


def policy(top: dict[str, Any], to: list[dict[str, Any]] = (), frm: list[dict[str, Any]] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": top}
    if to:
        spec["to"] = [{"targetRef": t, "default": {}} for t in to]
    if frm:
        spec["from"] = [{"targetRef": t, "default": {}} for t in frm]
    return {"type": "MeshTimeout", "spec": spec}


def want(doc: dict[str, Any], name: str = "x", mesh: str = "default") -> Access:
    return Access("CREATE", "MeshTimeout", mesh, name, (doc,))


def test_globs_are_star_only() -> None:
    assert glob("payments*", "payments") and glob("payments*", "payments-v2") and glob("*", "")
    assert not glob("payments*", "billing") and not glob("pay?", "payx") and glob("pay?", "pay?")
    assert not glob("[ab]", "a")


def test_top_target_by_name_or_by_service_tag() -> None:
    by_name = rule(when=[{"targetRef": {"kind": "MeshService", "name": "payments*"}}])
    by_tag = rule(when=[{"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "payments*"}}}])
    pay = policy({"kind": "MeshService", "name": "payments-api"})
    subset = policy({"kind": "MeshSubset", "tags": {"kuma.io/service": "payments", "version": "v2"}})
    for r in (by_name, by_tag):
        assert rule_grants(r, want(pay))
        assert not rule_grants(r, want(policy({"kind": "MeshService", "name": "billing"})))
        assert not rule_grants(r, want(policy({"kind": "Mesh"})))
        assert not rule_grants(r, want({"type": "MeshTimeout", "spec": {}}))  # no targetRef: the whole mesh
    assert rule_grants(by_tag, want(subset)) and not rule_grants(by_name, want(subset))


def test_to_and_from_entries_must_all_be_covered() -> None:
    r = rule(when=[{"targetRef": {"kind": "Mesh"}}, {"to": {"targetRef": {"kind": "MeshService", "name": "db*"}}}])
    assert rule_grants(r, want(policy({"kind": "Mesh"}, to=[{"kind": "MeshService", "name": "db-main"}])))
    assert not rule_grants(r, want(policy({"kind": "Mesh"}, to=[{"kind": "MeshService", "name": "db-main"},
                                                                  {"kind": "Mesh"}])))
    f = rule(when=[{"from": {"targetRef": {"kind": "MeshService", "name": "web"}}}])
    assert rule_grants(f, want(policy({"kind": "Mesh"}, frm=[{"kind": "MeshService", "name": "web"}])))
    assert not rule_grants(f, want(policy({"kind": "Mesh"}, frm=[{"kind": "Mesh"}])))


def test_types_names_and_mesh() -> None:
    r = rule(types=["MeshTimeout"], names=["team-a-*"], mesh="prod")
    assert rule_grants(r, Access("CREATE", "MeshTimeout", "prod", "team-a-1"))
    assert not rule_grants(r, Access("CREATE", "MeshTimeout", "prod", "team-b-1"))
    assert not rule_grants(r, Access("CREATE", "MeshTimeout", "dev", "team-a-1"))
    assert not rule_grants(r, Access("CREATE", "MeshRetry", "prod", "team-a-1"))
    assert not rule_grants(r, Access("CREATE", "MeshTimeout", None, "team-a-1"))  # across every mesh
    assert not rule_grants(r, Access("DELETE", "MeshTimeout", "prod", "team-a-1"))


async def test_bindings_by_user_and_group_and_the_builtin_admin() -> None:
    store = await MemoryStore.open()
    await store.create("AccessRole", "", "r", {"rules": [{"types": ["Mesh"], "access": ["GET"]}]})
    await store.create("AccessRoleBinding", "", "b", {"subjects": [{"type": "User", "name": "ann"}],
                                                      "roles": ["r", "missing"]})
    authz = Authorizer(store)
    ann, bob = Principal("ann", ("x",)), Principal("bob", ("x",))
    assert (await authz.decide(ann, Access("GET", "Mesh", "default", "default"))).allowed
    assert not (await authz.decide(bob, Access("GET", "Mesh", "default", "default"))).allowed
    await store.update("AccessRoleBinding", "", "b", {"subjects": [{"type": "Group", "name": "x"}], "roles": ["r"]})
    assert (await authz.decide(bob, Access("GET", "Mesh", "default", "default"))).allowed  # seen at once
    root = Principal("root", ("mesh-system:admin",))
    d = await authz.decide(root, Access("DELETE", "GlobalSecret", "", "anything"))
    assert d.allowed and d.reason == "role admin"
    # reads of secrets are VIEW_SECRETS, which GET does not include
    assert not (await authz.decide(bob, Access("GET", "Secret", "default", "s"))).allowed


@pytest.mark.parametrize(("address", "flag", "expected"), [
    ("127.0.0.1", None, True), ("::1", None, True), ("0.0.0.0", None, False), ("10.0.0.5", None, False),
    ("0.0.0.0", "true", True), ("127.0.0.1", "false", False)])
def test_loopback_admin_follows_the_bind_address_unless_set(address: str, flag: str | None, expected: bool) -> None:
    flags = {"api_address": address, **({"api_loopback_admin": flag} if flag else {})}
    assert build_cp_config(flags, env={}).loopback_admin is expected


async def test_retention_sweep_by_count_and_age() -> None:
    now = [1000.0]
    store = await MemoryStore.open(clock=lambda: now[0])
    for i in range(20):
        now[0] = 1000.0 + i
        await store.append_audit(AuditEntry("u", (), "", "CREATE", "Mesh", "", f"m{i}", "allowed"))
    assert await sweep_once(store, max_entries=15, max_age=0) == 5
    assert await sweep_once(store, max_entries=0, max_age=10, clock=lambda: 1025.0) == 10  # before t=1015
    assert await sweep_once(store, max_entries=15, max_age=10, clock=lambda: 1025.0) == 0
    assert [e.name for e in await store.audit_entries(AuditQuery())] == [f"m{i}" for i in range(19, 14, -1)]


async def test_decisions_survive_a_store_outage() -> None:
    """While the database is down (an HA outage): the admin is decided without the store, a user keeps the roles
    read before it, reads are not recorded, and a user never seen before gets the outage's error, not a grant."""
    from dpagent.controlplane.store.base import StoreUnavailable

    store = await MemoryStore.open()
    await store.create("AccessRole", "", "r", {"rules": [{"types": ["Mesh"], "access": ["GET"]}]})
    await store.create("AccessRoleBinding", "", "b", {"subjects": [{"type": "User", "name": "ann"}], "roles": ["r"]})
    authz = Authorizer(store)
    ann, root = Principal("ann", ("x",)), Principal("root", ("mesh-system:admin",))
    assert (await authz.decide(ann, Access("GET", "Mesh", "default", "default"))).allowed

    async def down(*a: Any, **kw: Any) -> Any:
        raise StoreUnavailable("the store is unreachable")

    store.revision = down  # type: ignore[method-assign]
    store.list = down  # type: ignore[method-assign]
    assert (await authz.decide(root, Access("DELETE", "Mesh", "default", "default"))).allowed
    assert (await authz.decide(ann, Access("GET", "Mesh", "default", "default"))).allowed
    assert not await authz.records("GET", "Mesh", "default")
    fresh = Authorizer(store)
    with pytest.raises(StoreUnavailable):
        await fresh.decide(ann, Access("GET", "Mesh", "default", "default"))
    assert (await fresh.decide(root, Access("GET", "Mesh", "default", "default"))).allowed
    assert not await fresh.records("GET", "Mesh", "default")
