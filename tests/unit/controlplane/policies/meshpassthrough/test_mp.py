"""MeshPassthrough: validation (every violation with its path, Kuma's example accepted), the capture listener each
mode and the Mesh's passthrough flag give (goldens through sync's real path, loaded by the real Envoy), appendMatch
concatenated across policies, and access logs reaching the passthrough chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from unit.controlplane.xds._xds_testlib import (
    Pki,
    assert_golden,
    envoy_validate,
    install_identity,
    resources_to_plain,
    static_bootstrap,
)

from dpagent.controlplane.policies.meshpassthrough.plugin import MeshPassthroughPlugin
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.proxy import LISTENER, proxy_warnings
from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot

TESTDATA = Path(__file__).parent / "testdata"
PLUGIN = MeshPassthroughPlugin()

KUMA_EXAMPLE = """
type: MeshPassthrough
name: allow-some-external
mesh: default
spec:
  default:
    passthroughMode: Matched
    appendMatch: [{type: Domain, value: api.example.com, port: 443, protocol: tls}, {type: CIDR, value: 10.10.0.0/16}]
"""


def mp(name: str, mode: str | None, matches: list[dict[str, Any]], target: dict[str, Any] | None = None
       ) -> dict[str, Any]:
    default: dict[str, Any] = {"appendMatch": matches}
    if mode is not None:
        default["passthroughMode"] = mode
    spec: dict[str, Any] = {"default": default}
    if target is not None:
        spec["targetRef"] = target
    return {"type": "MeshPassthrough", "mesh": "default", "name": name, "spec": spec}


def dp(name: str, address: str, *, tproxy: bool = True) -> dict[str, Any]:
    net: dict[str, Any] = {"address": address, "inbound": [
        {"port": 8080, "tags": {"kuma.io/service": name.split("-")[0], "kuma.io/protocol": "http"}}]}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    return {"type": "Dataplane", "mesh": "default", "name": name, "labels": {"app": name.split("-")[0]},
            "networking": net}


WORLD = [dp("web-1", "10.0.0.1"), dp("backend-1", "10.0.0.2"), dp("classic-1", "10.0.0.3", tproxy=False)]
MATCHES = [{"type": "Domain", "value": "api.example.com", "port": 443, "protocol": "tls"},
           {"type": "Domain", "value": "*.cdn.example.com", "protocol": "tls"},
           {"type": "Domain", "value": "httpbin.org", "port": 80, "protocol": "http"},
           {"type": "Domain", "value": "grpc.example.com", "port": 9000, "protocol": "grpc"},
           {"type": "IP", "value": "192.168.1.10", "port": 5432, "protocol": "mysql"},
           {"type": "CIDR", "value": "10.10.0.0/16"}]
NO_PASSTHROUGH = {"type": "Mesh", "name": "default", "networking": {"outbound": {"passthrough": False}}}
LOG = {"type": "MeshAccessLog", "mesh": "default", "name": "log-all", "spec": {"to": [
    {"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"type": "File", "file": {"path": "/tmp/out.log"}}]}}]}}

# case → (mesh, policies, proxy)
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], str]] = {
    "matched_every_kind": ({"type": "Mesh", "name": "default"}, [mp("some", "Matched", MATCHES)], "web-1"),
    "none": ({"type": "Mesh", "name": "default"}, [mp("deny", "None", [])], "web-1"),
    "mesh_flag_off": (NO_PASSTHROUGH, [], "web-1"),
    "mesh_flag_off_policy_all": (NO_PASSTHROUGH, [mp("all", "All", [])], "web-1"),
    "matched_with_access_log": ({"type": "Mesh", "name": "default"},
                                [mp("one", "Matched", MATCHES[:1]), LOG], "web-1"),
}


def _state(mesh: dict[str, Any], docs: list[dict[str, Any]]) -> Any:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["type"], []).append(d)
    return build_mesh_state(mesh, WORLD, by_kind)


def _capture(mesh: dict[str, Any], docs: list[dict[str, Any]], name: str = "web-1") -> Any:
    state = _state(mesh, docs)
    return proxy_snapshot(state, state.by_name[name]).resources(LISTENER)[names.OUTBOUND_PASSTHROUGH].message


def _generate(case: str) -> dict[str, dict[str, Any]]:
    mesh, docs, name = CASES[case]
    state = _state(mesh, docs)
    snap = proxy_snapshot(state, state.by_name[name])
    return {t: {n: r.message for n, r in snap.resources(t).items()} for t in snap.types()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources = _generate(case)
    assert_golden(resources_to_plain({LISTENER: {names.OUTBOUND_PASSTHROUGH: resources[LISTENER][
        names.OUTBOUND_PASSTHROUGH]}}), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    pki = Pki()
    install_identity(tmp_path, pki, "spiffe://default/web", 1)
    envoy_validate(static_bootstrap(_generate(case), trust_bundle=pki.ca_pem.decode()), tmp_path)


def test_kuma_example_is_accepted_unchanged() -> None:
    assert PLUGIN.validate(yaml.safe_load(KUMA_EXAMPLE)) == []


def test_every_violation_has_its_path() -> None:
    bad = mp("bad", "Some", [
        {"type": "Host", "value": "x"},
        {"type": "IP", "value": "300.1.1.1"},
        {"type": "CIDR", "value": "10.0.0.0/40"},
        {"type": "Domain", "value": "a.*.example.com", "protocol": "tls"},
        {"type": "Domain", "value": "example.com"},
        {"type": "Domain", "value": "*.example.com", "protocol": "http"},
        {"type": "IP", "value": "10.0.0.1", "protocol": "mysql"},
        {"type": "Domain", "value": "a.com", "port": 80, "protocol": "http"},
        {"type": "Domain", "value": "b.com", "port": 80, "protocol": "grpc"},
        {"type": "Domain", "value": "a.com", "port": 80, "protocol": "http"},
        {"type": "IP", "value": "10.0.0.2", "port": 0, "protocol": "udp", "extra": 1}])
    problems = PLUGIN.validate(bad)
    paths = {p for p, _ in problems}
    base = "spec.default.appendMatch"
    assert {"spec.default.passthroughMode", f"{base}[0].type", f"{base}[1].value", f"{base}[2].value",
            f"{base}[3].value", f"{base}[4].protocol", f"{base}[5].port", f"{base}[6].port", f"{base}[8].protocol",
            f"{base}[9]", f"{base}[10].port", f"{base}[10].protocol", f"{base}[10].extra"} <= paths, problems


def test_mode_none_and_flag_off_drop_the_default_chain_and_all_keeps_it() -> None:
    plain = {"type": "Mesh", "name": "default"}
    assert _capture(plain, []).HasField("default_filter_chain")
    assert not _capture(plain, [mp("deny", "None", [])]).HasField("default_filter_chain")
    assert not _capture(NO_PASSTHROUGH, []).HasField("default_filter_chain")
    assert _capture(NO_PASSTHROUGH, [mp("all", "All", [])]).HasField("default_filter_chain")
    assert not _capture(plain, [mp("bare", None, [])]).HasField("default_filter_chain")  # Kuma's default: None


def test_append_match_concatenates_across_policies_and_selection_counts() -> None:
    wide = mp("wide", "Matched", [MATCHES[0]])
    narrow = mp("narrow", "Matched", [{"type": "IP", "value": "1.2.3.4"}], {"kind": "Dataplane",
                                                                            "labels": {"app": "web"}})
    web = _capture({"type": "Mesh", "name": "default"}, [wide, narrow], "web-1")
    backend = _capture({"type": "Mesh", "name": "default"}, [wide, narrow], "backend-1")
    web_chains = {c.name for c in web.filter_chains if c.name.startswith("passthrough:")}
    backend_chains = {c.name for c in backend.filter_chains if c.name.startswith("passthrough:")}
    assert "passthrough:tls:443" in web_chains and "passthrough:ip:0" in web_chains
    assert "passthrough:tls:443" in backend_chains and "passthrough:ip:0" not in backend_chains


def test_portless_entries_also_cover_ports_mesh_services_claim() -> None:
    listener = _capture({"type": "Mesh", "name": "default"}, [mp("cdn", "Matched", [MATCHES[1]])])
    tls_ports = sorted(c.filter_chain_match.destination_port.value for c in listener.filter_chains
                       if c.name.startswith("passthrough:tls:"))
    assert tls_ports == [0, 80, 8080]  # 80 (VIPs) and 8080 (endpoints) carry mesh chains


def test_classic_proxy_gets_a_warning_not_a_change() -> None:
    state = _state({"type": "Mesh", "name": "default"}, [mp("some", "Matched", MATCHES)])
    warnings = proxy_warnings(state.ctx, state.by_name["classic-1"])
    assert any("needs transparent proxying" in w for w in warnings), warnings
