"""The GUI's page data from plain inputs: dataplane status and NACKs, mesh counts, the permission matrix (checked
against the RBAC semantics of MeshTrafficPermission), the certificate timeline and a CA switch's progress."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dpagent.controlplane.ca import generate_root_ca
from dpagent.controlplane.gui import views
from dpagent.controlplane.xds.sync import build_mesh_state
from dpagent.model.dataplane import decode_dataplane
from dpagent.model.mesh import decode_mesh

NOW = 1_800_000_000.0
SECRET = views.SECRET_TYPE
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def mesh(mtls: bool = True, enabled: str = "ca-1", backends: tuple[str, ...] = ("ca-1",)) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "Mesh", "name": "default", "skipCreatingInitialPolicies": ["*"]}
    if mtls:
        doc["mtls"] = {"enabledBackend": enabled, "backends": [{"name": b, "type": "builtin"} for b in backends]}
    return doc


def dp(name: str, service: str, port: int = 8080, ready: bool = True, **labels: str) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http",
                                                      "zone": "z1"}}
    if not ready:
        inbound["health"] = {"ready": False}
    return {"type": "Dataplane", "mesh": "default", "name": name, "labels": {"app": service, **labels},
            "networking": {"address": "10.0.0.1", "inbound": [inbound],
                           "outbound": [{"port": 9000, "tags": {"kuma.io/service": "backend"}}]}}


def mtp(name: str, target: dict[str, Any], action: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name,
            "spec": {"targetRef": target, "from": [{"targetRef": source, "default": {"action": action}}]}}


ALLOW_ALL = mtp("allow-all", {"kind": "Mesh"}, "Allow", {"kind": "Mesh"})
DENY_WEB = mtp("deny-web", {"kind": "MeshService", "name": "backend"}, "Deny", {"kind": "MeshService", "name": "web"})
DPS = [dp("backend-1", "backend"), dp("backend-2", "backend", 8081), dp("web-1", "web"), dp("db-1", "db")]


def ctx(policies: list[dict[str, Any]], dataplanes: list[dict[str, Any]] = DPS, mtls: bool = True) -> Any:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for p in policies:
        by_kind.setdefault(p["type"], []).append(p)
    return build_mesh_state(mesh(mtls), dataplanes, by_kind).ctx


def cells(matrix: views.PermissionMatrix) -> dict[tuple[str, str], str]:
    return {(a, b): c for a, row in matrix.decisions.items() for b, c in row.items()}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def insight(name: str, backend: str, expires: float, issued: float) -> dict[str, Any]:
    return {"type": "DataplaneInsight", "mesh": "default", "name": name, "mTLS": {
        "issuedBackend": backend, "certificateExpirationTime": iso(expires), "lastCertificateRegeneration": issued}}


# ---- dataplanes and overview -----------------------------------------------------------------------------------

def test_row_status_follows_the_stream_and_the_latest_standing_nack() -> None:
    doc = decode_dataplane(dp("web-1", "web"))
    assert views.dataplane_row(doc, None, None).status == views.OFFLINE
    online = {"connected": True, "since": NOW - 60, "types": {CLUSTER: {"nack": None}}}
    row = views.dataplane_row(doc, insight("web-1", "ca-1", NOW + 3600, NOW - 60), online,
                              {"agent": "0.1.0", "envoy": "1.34.1"})
    assert (row.status, row.since, row.services, row.tags) == (views.ONLINE, NOW - 60, ["web"],
                                                               {"kuma.io/protocol": "http", "zone": "z1"})
    assert (row.cert_backend, row.cert_expires, row.agent_version, row.envoy_version) == (
        "ca-1", NOW + 3600, "0.1.0", "1.34.1")
    nacking = {"connected": True, "types": {
        CLUSTER: {"nack": {"version": "3", "error": "old", "at": NOW - 50}},
        SECRET: {"nack": {"version": "4", "error": "bad secret", "at": NOW - 5}}}}
    row = views.dataplane_row(doc, None, nacking)
    assert row.status == views.NACKING
    assert row.last_nack == views.LastNack("secrets", "bad secret", NOW - 5)
    gone = {"connected": False, "last_disconnect": NOW - 9, "types": nacking["types"]}
    assert (views.dataplane_row(doc, None, gone).status, views.dataplane_row(doc, None, gone).since) == (
        views.OFFLINE, NOW - 9)


def test_mesh_summary_counts_nacking_as_online() -> None:
    nack = {CLUSTER: {"nack": {"version": "1", "error": "x", "at": 1.0}}}
    statuses = [views.status_of(st) for st in (
        {"connected": True}, {"connected": True, "types": nack}, None, {"connected": False, "types": nack})]
    s = views.mesh_summary(mesh(), statuses, 2, {"MeshTimeout": 2, "MeshRetry": 0})
    assert (s.dataplanes, s.online, s.offline, s.nacking, s.services, s.mtls) == (4, 2, 2, 1, 2, "ca-1")
    assert s.policies == {"MeshTimeout": 2}
    assert views.mesh_summary({"name": "plain"}, [], 0, {}).mtls == "off"


# ---- who may call whom -----------------------------------------------------------------------------------------

def test_matrix_allow_all_then_a_deny_for_one_pair() -> None:
    assert set(cells(views.permission_matrix(ctx([ALLOW_ALL]))).values()) == {views.ALLOW}
    got = cells(views.permission_matrix(ctx([ALLOW_ALL, DENY_WEB])))
    assert got[("web", "backend")] == views.DENY
    assert got[("backend", "web")] == got[("db", "backend")] == got[("web", "db")] == views.ALLOW
    m = views.permission_matrix(ctx([ALLOW_ALL, DENY_WEB]))
    assert m.policies["backend"] == ["allow-all", "deny-web"] and m.policies["web"] == ["allow-all"]


def test_matrix_without_any_permission_denies_and_without_mtls_is_open() -> None:
    assert set(cells(views.permission_matrix(ctx([])))) and \
        set(cells(views.permission_matrix(ctx([]))).values()) == {views.DENY}
    m = views.permission_matrix(ctx([DENY_WEB], mtls=False))
    assert not m.enforced and set(cells(m).values()) == {views.OPEN}


def test_matrix_shows_mixed_when_instances_of_a_callee_disagree() -> None:
    dps = [dp("backend-1", "backend", canary="yes"), dp("backend-2", "backend", 8081), dp("web-1", "web")]
    only_canary = mtp("deny-canary", {"kind": "Dataplane", "labels": {"canary": "yes"}}, "Deny",
                      {"kind": "MeshService", "name": "web"})
    got = cells(views.permission_matrix(ctx([ALLOW_ALL, only_canary], dps)))
    assert got[("web", "backend")] == views.MIXED
    assert got[("backend", "backend")] == views.ALLOW


def test_matrix_reads_rules_spiffe_matches_and_shadow_allows() -> None:
    rules = {"type": "MeshTrafficPermission", "mesh": "default", "name": "rules", "spec": {
        "targetRef": {"kind": "MeshService", "name": "db"},
        "rules": [{"default": {"allow": [{"spiffeID": {"type": "Prefix", "value": "spiffe://default/"}}],
                               "deny": [{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}]}}]}}
    shadow = mtp("shadow", {"kind": "MeshService", "name": "backend"}, "AllowWithShadowDeny",
                 {"kind": "MeshService", "name": "web"})
    got = cells(views.permission_matrix(ctx([rules, shadow])))
    assert got[("web", "db")] == views.DENY
    assert got[("backend", "db")] == got[("db", "db")] == views.ALLOW
    assert got[("web", "backend")] == views.SHADOW
    assert got[("db", "backend")] == views.DENY  # the shadow rule names web only; nothing else allows db


def test_services_page_instances_health_and_policies_to_and_from() -> None:
    dps = [dp("backend-1", "backend"), dp("backend-2", "backend", 8081, ready=False), dp("web-1", "web")]
    timeout = {"type": "MeshTimeout", "mesh": "default", "name": "to-backend", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"idleTimeout": "5s"}}]}}
    page = views.services_page(ctx([ALLOW_ALL, DENY_WEB, timeout], dps),
                               {"backend-1": views.ONLINE, "backend-2": views.ONLINE, "web-1": views.OFFLINE})
    by = {s.name: s for s in page.services}
    assert [(i.name, i.status, i.ready) for i in by["backend"].instances] == [
        ("backend-1", views.ONLINE, True), ("backend-2", views.ONLINE, False)]
    assert by["backend"].healthy == 1 and by["web"].healthy == 0
    assert by["backend"].to == ["MeshTimeout/to-backend"]
    assert by["backend"].on_proxies == ["MeshTrafficPermission/allow-all", "MeshTrafficPermission/deny-web"]
    assert by["web"].on_proxies == ["MeshTimeout/to-backend", "MeshTrafficPermission/allow-all"]
    assert by["web"].from_ == ["MeshTrafficPermission/deny-web"]


def test_affected_lists_the_selected_dataplanes_and_inbounds() -> None:
    c = ctx([ALLOW_ALL, DENY_WEB])
    assert [(a.name, a.inbounds) for a in views.affected(c, "MeshTrafficPermission", "deny-web")] == [
        ("backend-1", ["10.0.0.1:8080"]), ("backend-2", ["10.0.0.1:8081"])]
    assert len(views.affected(c, "MeshTrafficPermission", "allow-all")) == len(DPS)


def test_target_of_describes_the_top_target_ref() -> None:
    assert views.target_of(DENY_WEB) == "MeshService(backend)"
    assert views.target_of({"spec": {}}) == "Mesh"


# ---- certificates ----------------------------------------------------------------------------------------------

def test_timeline_buckets_expiry_and_issuance() -> None:
    leaves = [insight("a", "ca-1", NOW - 1, NOW - 90000), insight("b", "ca-1", NOW + 600, NOW - 600),
              insight("c", "ca-1", NOW + 7200, NOW - 7200), insight("d", "ca-1", NOW + 3 * 86400, NOW - 30)]
    t = views.timeline(leaves, NOW)
    assert (t.expired, t.next_hour, t.next_day, t.later) == (1, 1, 2, 1)
    assert (t.issued_last_hour, t.issued_last_day) == (2, 3)
    assert t.expiry_by_hour[0] == 1 and t.expiry_by_hour[2] == 1 and sum(t.expiry_by_hour) == 2
    assert t.issued_by_hour[23] == 2 and t.issued_by_hour[21] == 1


def acked(version: str = "v2", snapshot: str = "v2") -> dict[str, Any]:
    return {"connected": True, "types": {SECRET: {"acked_version": version, "snapshot_version": snapshot}}}


def test_switch_progress_counts_bundle_acks_and_leaves_by_root() -> None:
    m = decode_mesh(mesh(enabled="ca-2", backends=("ca-1", "ca-2")))
    leaves = [insight("a", "ca-1", NOW + 60, NOW), insight("b", "ca-2", NOW + 60, NOW),
              insight("gone", "ca-1", NOW - 1, NOW - 100)]
    p = views.switch_progress(m, ("ca-1", "ca-2"), [acked(), acked("v1", "v2")], leaves, False, NOW)
    assert p is not None
    assert (p.connected, p.bundle_acked, p.leaves_total, p.leaves_new, p.leaves_old, p.done) == (
        2, 1, 2, 1, {"ca-1": 1}, False)
    before = views.switch_progress(m, ("ca-1",), [acked(), acked()], leaves, False, NOW)
    assert before is not None and before.bundle_acked == 0 and not before.in_bundle
    done = views.switch_progress(m, ("ca-2",), [acked(), acked()], leaves[1:2], True, NOW)
    assert done is not None and done.done and done.bundle_acked == 2 and done.leaves_new == 1
    assert views.switch_progress(decode_mesh(mesh(mtls=False)), (), [], [], False, NOW) is None


def test_bundle_roots_name_each_root_by_backend_in_order() -> None:
    one, _ = generate_root_ca("default", "ca-1")
    two, _ = generate_root_ca("default", "ca-2")
    roots = views.bundle_roots(one + two, ("ca-1", "ca-2"))
    assert [r.backend for r in roots] == ["ca-1", "ca-2"] and roots[0].serial != roots[1].serial
    assert views.bundle_roots("", ()) == []
    m = decode_mesh(mesh(enabled="ca-2", backends=("ca-2",)))
    assert [(b.name, b.type, b.enabled, b.in_bundle) for b in views.backends_view(m, ("ca-1", "ca-2"))] == [
        ("ca-2", "builtin", True, True), ("ca-1", "retired", False, True)]
