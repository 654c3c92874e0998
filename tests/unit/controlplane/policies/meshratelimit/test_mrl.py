"""MeshRateLimit: Kuma docs' YAML accepted unchanged, bad specs refused at exact paths, merge per inbound, and the
Envoy resources (goldens, checked by the real Envoy): empty HTTP filter + bucket per inbound route, TCP filter
first on the chain, MeshTrafficPermission's RBAC kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from policylib import BACKEND_DP, BACKEND_HTTP, BACKEND_TCP, MTLS_MESH, policy_doc
from unit.controlplane.xds._xds_testlib import assert_golden, envoy_accepts, resources_to_plain

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshratelimit import MeshRateLimitPlugin, MrlRules
from dpagent.controlplane.xds.builders.listener import http_filter_names
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import LISTENER, ROUTE

PLUGIN = MeshRateLimitPlugin()
TESTDATA = Path(__file__).parent / "testdata"

DOCS = ["""
type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        local:
          http:
            requestRate:
              num: 5
              interval: 10s
            onRateLimit:
              status: 423
              headers:
                set:
                  - name: "x-kuma-rate-limited"
                    value: "true"
""", """
type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: MeshService
    name: backend
  rules:
    - default:
        local:
          tcp:
            connectionRate:
              num: 5
              interval: 10s
"""]


@pytest.mark.parametrize("doc", DOCS)
def test_kuma_docs_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    PLUGIN.parse(parsed)


def mrl(local: Any, name: str = "p", section: str = "from", target: Any = None) -> dict[str, Any]:
    return policy_doc("MeshRateLimit", {"local": local}, section, top=target or {"kind": "Mesh"}, name=name)


P = "spec.from[0].default.local"
BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("empty local", {}, [(P, "must define http and/or tcp")]),
    ("zero num, short interval, bad status", {"http": {"requestRate": {"num": 0, "interval": "50ms"},
                                                      "onRateLimit": {"status": 0}}},
     [(f"{P}.http.requestRate.num", "must be a whole number greater than 0"),
      (f"{P}.http.requestRate.interval", "must be greater than 50ms"),
      (f"{P}.http.onRateLimit.status", "must be an HTTP status code between 100 and 599")]),
    ("negative interval, missing num", {"tcp": {"connectionRate": {"interval": "-1s"}}},
     [(f"{P}.tcp.connectionRate.num", "must be defined"),
      (f"{P}.tcp.connectionRate.interval",
       "'-1s' is not a duration; use a form like 30s, 5m, 1h30m, 500ms, 7d, 2w or 10y")]),
    ("empty http and tcp", {"http": {}, "tcp": {}},
     [(f"{P}.http", "must define at least one of: disabled, requestRate, onRateLimit"),
      (f"{P}.tcp", "must define disabled or connectionRate")]),
    ("too many headers", {"http": {"onRateLimit": {"headers": {"add": [{"name": "x", "value": "1"}] * 17}}}},
     [(f"{P}.http.onRateLimit.headers.add", "must hold at most 16 headers")]),
]


@pytest.mark.parametrize(("local", "want"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_every_violation_with_path(local: Any, want: list[tuple[str, str]]) -> None:
    assert PLUGIN.validate(mrl(local)) == want


def test_from_kind_other_than_mesh_refused() -> None:
    doc = mrl({"http": {"disabled": True}})
    doc["spec"]["from"][0]["targetRef"] = {"kind": "MeshService", "name": "web"}
    assert [p for p, _ in PLUGIN.validate(doc)] == ["spec.from[0].targetRef.kind"]


MESH, DP, HTTP, TCP = MTLS_MESH, BACKEND_DP, BACKEND_HTTP, BACKEND_TCP
HTTP_LIMIT = {"http": {"requestRate": {"num": 10, "interval": "1s"}, "onRateLimit": {
    "status": 429, "headers": {"set": [{"name": "x-rate-limited", "value": "true"}],
                               "add": [{"name": "x-limit", "value": "10/s"}]}}}}
TCP_LIMIT = {"tcp": {"connectionRate": {"num": 5, "interval": "10s"}}}
CASES: dict[str, list[dict[str, Any]]] = {
    "http_and_tcp": [mrl({**HTTP_LIMIT, **TCP_LIMIT})],
    # the more specific policy replaces the rate and switches TCP off for service `db`
    "specific_overrides": [
        mrl({**HTTP_LIMIT, **TCP_LIMIT}, "mesh-wide"),
        mrl({"http": {"requestRate": {"num": 50, "interval": "2s"}}, "tcp": {"disabled": True}}, "db",
            "rules", {"kind": "MeshService", "name": "db"})],
}


def ctx(policies: list[dict[str, Any]]) -> MeshContext:
    mtp = {"type": "MeshTrafficPermission", "mesh": "default", "name": "all", "spec": {
        "targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}
    return MeshContext(MESH, [DP], {"MeshRateLimit": policies, "MeshTrafficPermission": [mtp]})


def resources(policies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    c = ctx(policies)
    return generate(c, DP, build_proxy(c, DP)).messages()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    res = resources(CASES[case])
    assert_golden(resources_to_plain({LISTENER: res[LISTENER], ROUTE: {
        n: r for n, r in res[ROUTE].items() if n.startswith("inbound:")}}), case, TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(resources(CASES[case]), tmp_path, "spiffe://default/backend")


def test_filter_placement_keeps_rbac() -> None:
    listeners = resources(CASES["http_and_tcp"])[LISTENER]
    http_chain = listeners[f"inbound:{HTTP}"].filter_chains[0]
    # the connection limit comes first on the HTTP chain too; RBAC still lands in the connection manager
    assert [f.name for f in http_chain.filters] == ["envoy.filters.network.local_ratelimit",
                                                    "envoy.filters.network.http_connection_manager"]
    assert http_filter_names(http_chain) == ["dpagent.mtp.deny", "dpagent.mtp.allow",
                                             "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    assert [f.name for f in listeners[f"inbound:{TCP}"].filter_chains[0].filters] == [
        "envoy.filters.network.rbac", "envoy.filters.network.rbac", "envoy.filters.network.local_ratelimit",
        "envoy.filters.network.tcp_proxy"]


def test_merge_and_inspect() -> None:
    c = ctx(CASES["specific_overrides"])
    p = build_proxy(c, DP)
    r = p.rules["MeshRateLimit"]
    assert isinstance(r, MrlRules)
    db = r.inbounds[TCP]
    assert db.tcp is not None and db.tcp.disabled and db.http is not None and db.http.request_rate is not None
    assert (db.http.request_rate.num, db.http.on_rate_limit is not None) == (50, True)
    view = next(k for k in kind_policies(p) if k.kind == "MeshRateLimit")
    shown = {i.inbound: i.conf for i in view.inbounds}
    assert shown[HTTP].http.request_rate.num == 10 and shown[TCP].tcp.disabled
