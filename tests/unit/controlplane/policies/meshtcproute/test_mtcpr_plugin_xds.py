"""MeshTCPRoute's xDS step on its own: already-matched rules in, the destination's tcp_proxy on its outbound
listener or on its chains of the transparent-proxy capture listener out, one golden per case, each loaded by the
real Envoy; an HTTP destination a MeshHTTPRoute shapes keeps its HCM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from unit.controlplane.policies.route_plugin_testlib import CLIENT, TPROXY_CLIENT, generate_with
from unit.controlplane.xds._xds_testlib import (
    assert_golden,
    envoy_accepts,
    resources_to_plain,
)

from dpagent.controlplane.policies.meshtcproute.api import KIND, to_rules
from dpagent.controlplane.policies.meshtcproute.plugin import TcpRouteRules
from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.resources import ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER

TESTDATA = Path(__file__).parent / "testdata"
TCP_PROXY = "envoy.filters.network.tcp_proxy"


def split(service: str, tag: str, *weights: tuple[str, int], http_routed: frozenset[str] = frozenset()
          ) -> TcpRouteRules:
    refs = [{"kind": "MeshServiceSubset", "name": service, "tags": {tag: v}, "weight": w} for v, w in weights]
    return TcpRouteRules(by_service={service: (to_rules({"rules": [{"default": {"backendRefs": refs}}]}),)},
                         http_routed=http_routed)


DB_SPLIT = split("db", "role", ("primary", 70), ("replica", 30))
CASES: dict[str, tuple[Any, TcpRouteRules]] = {
    "outbound_db_split": (CLIENT, DB_SPLIT),
    "tproxy_db_split": (TPROXY_CLIENT, DB_SPLIT),
    "outbound_http_backend_to_l4": (CLIENT, split("backend", "version", ("v2", 1))),
}


def _apply(dp: Any, rules: TcpRouteRules | None) -> ResourceSet:
    return generate_with({KIND: rules} if rules is not None else {}, dp)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    rs = _apply(*CASES[case])
    msgs = rs.messages()
    outbound = {LISTENER: {n: m for n, m in msgs[LISTENER].items() if n.startswith("outbound:")},
                CLUSTER: {n: m for n, m in msgs[CLUSTER].items() if "-" in n}}  # the subset clusters
    assert_golden(resources_to_plain(outbound), f"xds_{case}", TESTDATA)


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts(case: str, tmp_path: Any) -> None:
    envoy_accepts(_apply(*CASES[case]).messages(), tmp_path, "spiffe://default/web")


def test_only_the_destination_chains_change() -> None:
    before = _apply(TPROXY_CLIENT, None).messages()[LISTENER][names.OUTBOUND_PASSTHROUGH]
    after = _apply(TPROXY_CLIENT, DB_SPLIT).messages()[LISTENER][names.OUTBOUND_PASSTHROUGH]
    chains = {c.name: c.SerializeToString(deterministic=True) for c in before.filter_chains}
    changed = {c.name for c in after.filter_chains if c.SerializeToString(deterministic=True) != chains[c.name]}
    assert changed == {names.outbound_chain("db", 80), names.outbound_chain("db", 8080)}


def test_http_destination_shaped_by_an_http_route_keeps_its_hcm() -> None:
    routed = split("backend", "version", ("v2", 1), http_routed=frozenset({"backend"}))
    listener = _apply(CLIENT, routed).messages()[LISTENER]["outbound:127.0.0.1:10001"]
    assert [f.name for c in listener.filter_chains for f in c.filters] == [
        "envoy.filters.network.http_connection_manager"]
    plain = _apply(CLIENT, split("backend", "version", ("v2", 1))).messages()[LISTENER]["outbound:127.0.0.1:10001"]
    assert [f.name for c in plain.filter_chains for f in c.filters] == [TCP_PROXY]
