"""How `verify` picks its outside address: routing-table parsing and the choice (kernel calls replaced by fakes)."""

from __future__ import annotations

import ipaddress

from transparent_proxy.probe_target import Route, choose, parse_ipv4_routes, parse_ipv6_routes

# /proc/net/route of a VM with one /24 and no default route, plus a reject route
ROUTE4 = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
vB\t0000C90A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
vB\t0000000A\t00000000\t0201\t0\t0\t0\t000000FF\t0\t0\t0
"""
# /proc/net/ipv6_route: a ULA /64, link-local, local host routes, multicast, the reject default of the local table
Z = "0" * 32


def _r6(dst: str, plen: str, flags: str, dev: str) -> str:
    """One /proc/net/ipv6_route line: dst plen src src_plen next_hop metric refcnt use flags dev."""
    return f"{dst} {plen} {Z} 00 {Z} 00000100 00000001 00000000 {flags} {dev}"


ROUTE6 = "\n".join([
    _r6("fd000201" + "0" * 24, "40", "00000001", "vB"),
    _r6("fe80" + "0" * 28, "40", "00000001", "vB"),
    _r6("0" * 31 + "1", "80", "80200001", "lo"),  # local (RTF_LOCAL)
    _r6("fd000201" + "0" * 23 + "2", "80", "80200001", "vB"),
    _r6("ff" + "0" * 30, "08", "00000001", "vB"),  # multicast
    _r6(Z, "00", "00200200", "lo"),  # reject default of the local table
]) + "\n"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_parse_ipv4_keeps_usable_non_default_routes() -> None:
    assert parse_ipv4_routes(ROUTE4) == [Route(net("10.201.0.0/24"), "vB")]


def test_parse_ipv6_drops_local_multicast_reject_routes() -> None:
    assert parse_ipv6_routes(ROUTE6) == [Route(net("fd00:201::/64"), "vB"), Route(net("fe80::/64"), "vB")]


def test_documentation_address_when_routed() -> None:
    t = choose(4, [Route(net("10.201.0.0/24"), "vB")], [], routable=lambda a: True, is_local=lambda a: False)
    assert t.address == "192.0.2.1"


def test_connected_route_address_without_default_route() -> None:
    routes = [Route(net("10.201.0.0/24"), "vB")]
    t = choose(4, routes, [], routable=lambda a: a.startswith("10."), is_local=lambda a: a == "10.201.0.193")
    assert t.address == "10.201.0.192", t  # .193 is this host's own address, so the next candidate
    assert "192.0.2.1 has no route" in t.reason and "10.201.0.0/24 dev vB" in t.reason


def test_link_local_only_cannot_probe() -> None:
    t = choose(6, parse_ipv6_routes(ROUTE6)[1:], [], routable=lambda a: a.startswith("fe80"),
               is_local=lambda a: False)
    assert t.address is None
    assert t.reason.startswith("cannot probe (no route for this family:") and "fe80::/64 dev vB" in t.reason


def test_no_routes_at_all() -> None:
    t = choose(4, [], [], routable=lambda a: False, is_local=lambda a: False)
    assert t.address is None and "no other route" in t.reason


def test_excluded_addresses_are_never_probed() -> None:
    routes = [Route(net("10.201.0.0/24"), "vB")]
    t = choose(4, routes, [net("192.0.2.0/24"), net("10.0.0.0/8")], routable=lambda a: True,
               is_local=lambda a: False)
    assert t.address is None and t.reason.startswith("cannot probe (no usable address:")
    assert "--exclude-outbound-ips" in t.reason and "10.201.0.193" in t.reason
    t = choose(4, routes, [net("192.0.2.0/24")], routable=lambda a: True, is_local=lambda a: False)
    assert t.address == "10.201.0.193" and "inside --exclude-outbound-ips" in t.reason
