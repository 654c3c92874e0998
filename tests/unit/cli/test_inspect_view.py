"""`dpagent inspect` rendering: one test per field it prints, fed with the CP's own typed views."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dpagent.cli.inspect_view import render, render_affected, render_policies, when
from dpagent.controlplane.views import (
    AffectedDataplane,
    CertificateStatus,
    DataplaneInspect,
    InboundPolicies,
    KindPolicies,
    Nack,
    OutboundPolicies,
    PolicyInspect,
    TypeStatus,
    XdsStatus,
)

NOW = 1_764_680_400.0  # 2025-12-02T13:00:00Z
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
DP = {"type": "Dataplane", "mesh": "default", "name": "backend-1"}


def text(**fields: Any) -> str:
    return render(msgspec.to_builtins(DataplaneInspect(DP, **fields)), now=NOW)


def test_times_are_utc_iso_with_age() -> None:
    assert when(NOW - 95, NOW) == "2025-12-02T12:58:25Z (1m35s ago)"
    assert when(NOW + 90061, NOW) == "2025-12-03T14:01:01Z (in 1d1h)"
    assert when(None, NOW) == "-"
    assert when("2025-12-03T13:00:00+00:00", NOW) == "2025-12-03T13:00:00Z (in 1d)"


def test_header_names_mesh_and_dataplane() -> None:
    assert text().splitlines()[0] == "Dataplane default/backend-1"


def test_never_connected() -> None:
    assert "xDS: never connected to this control plane" in text()


def test_connected_since_is_a_time_not_an_epoch_float() -> None:
    out = text(xds=XdsStatus(connected=True, streams=1, since=NOW - 3600))
    assert "xDS: connected since 2025-12-02T12:00:00Z (1h ago)" in out and "1764" not in out


def test_disconnected_shows_when() -> None:
    out = text(xds=XdsStatus(connected=False, last_disconnect=NOW - 60))
    assert "xDS: disconnected (last stream closed 2025-12-02T12:59:00Z (1m ago))" in out


def test_each_type_shows_config_and_acked_versions() -> None:
    out = text(xds=XdsStatus(connected=True, since=NOW, types={
        LDS: TypeStatus(snapshot_version="a1", sent_version="a1", acked_version="a1", acked_at=NOW - 5),
        RDS: TypeStatus(snapshot_version="b2", sent_version="b2", acked_version="b1")}))
    lines = out.splitlines()
    assert any(ln.split()[:6] == ["Listener", "in", "sync", "config", "a1", "acked"] for ln in lines)
    assert any(ln.split()[:5] == ["RouteConfiguration", "pending", "config", "b2", "acked"] for ln in lines)
    assert "(5s ago)" in out


def test_nack_is_printed_with_version_time_and_error() -> None:
    out = text(xds=XdsStatus(connected=True, since=NOW, types={
        LDS: TypeStatus(snapshot_version="a2", acked_version="a1", nack=Nack("a2", "bad listener", NOW - 2))}))
    assert "NACK of version a2 at 2025-12-02T12:59:58Z (2s ago): bad listener" in out


def test_certificate_serial_identity_backend_expiry_and_issue_time() -> None:
    out = text(certificate=CertificateStatus("0a1b", "2025-12-03T13:00:00+00:00", "ca-1", "spiffe://default/backend",
                                             NOW - 7200, 3))
    assert "certificate: serial 0a1b (spiffe://default/backend), backend ca-1" in out
    assert "expires 2025-12-03T13:00:00Z (in 1d)" in out
    assert "issued 2025-12-02T11:00:00Z (2h ago), 3 issued so far" in out


def test_matched_policies_are_named_per_kind() -> None:
    """The old renderer always printed `MeshTrafficPermission: -` (it read an attribute no rules class had)."""
    out = text(policies=[KindPolicies("MeshTrafficPermission", ["allow-all", "deny-web"])])
    assert "MeshTrafficPermission: allow-all, deny-web" in out
    assert "MeshTrafficPermission: -" in text(policies=[KindPolicies("MeshTrafficPermission", [])])


def test_warnings_are_printed() -> None:
    assert "  warning: MeshSubset{v=1} matches nothing" in text(warnings=["MeshSubset{v=1} matches nothing"])


def test_policies_view_shows_inbound_policies_and_conf() -> None:
    kinds = [KindPolicies("MeshTrafficPermission", ["allow-all"], [InboundPolicies(
        "10.0.0.1:8080", ["allow-all"], {"from": [{"from": "Mesh", "action": "Allow"}]})], warnings=["w1"])]
    out = render_policies({"mesh": "default", "dataplane": "backend-1", "kinds": msgspec.to_builtins(kinds)})
    assert "  MeshTrafficPermission: allow-all" in out
    assert "    inbound 10.0.0.1:8080: allow-all" in out
    assert "      - from: Mesh" in out and "        action: Allow" in out
    assert "    warning: w1" in out


def test_affected_lists_dataplanes_and_inbounds() -> None:
    view = PolicyInspect("MeshTrafficPermission", "default", "deny-web", 1,
                         [AffectedDataplane("backend-1", ["10.0.0.1:8080"])])
    out = render_affected(msgspec.to_builtins(view))
    assert out.splitlines() == ["DATAPLANE  INBOUNDS", "backend-1  10.0.0.1:8080"]
    empty = PolicyInspect("MeshTrafficPermission", "default", "x", 0, [])
    assert render_affected(msgspec.to_builtins(empty)) == "MeshTrafficPermission default/x selects no dataplane"


def test_a_renamed_field_fails_loudly() -> None:
    with pytest.raises(msgspec.ValidationError):
        render({"dataplane": DP, "xds": {"connected": "yes"}})


def test_policies_view_shows_outbound_policies_and_merged_conf() -> None:
    kinds = [KindPolicies("MeshTimeout", ["mesh-timeout-all", "backend-slow"], outbounds=[OutboundPolicies(
        "backend", ["mesh-timeout-all", "backend-slow"], {"http": {"requestTimeout": "30s"}})]),
             KindPolicies("MeshRetry", [], outbounds=[OutboundPolicies("db", ["none-conf"])])]
    out = render_policies({"mesh": "default", "dataplane": "web-1", "kinds": msgspec.to_builtins(kinds)})
    lines = out.splitlines()
    assert lines[0] == "Dataplane default/web-1: policies (lowest priority first)"
    assert "  MeshTimeout: mesh-timeout-all, backend-slow" in lines
    assert "    outbound backend: mesh-timeout-all, backend-slow" in lines
    assert lines[lines.index("    outbound backend: mesh-timeout-all, backend-slow") + 1:][:2] == [
        "      http:", "        requestTimeout: 30s"]
    assert "  MeshRetry: -" in lines and lines[-1] == "    outbound db: none-conf"  # no conf, no YAML under it
