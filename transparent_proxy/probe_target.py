"""Pick the outside address `verify` connects to, or say exactly why no address can be probed.

connect() looks up a route before the packet exists, so without a route the kernel fails the call (ENETUNREACH)
and netfilter's OUTPUT hook never sees it: a missing route looks exactly like a missing redirect. So the probe
first asks the kernel whether an address is routable (a UDP connect sends nothing) and prefers a documentation
address (reached only through a default route), then an address inside some other route (a connected subnet
without a default route, the usual VM), and otherwise reports "cannot probe" with the reason.
Link-local destinations are never used: such a connection is bound to its interface and cannot be redirected
to loopback, so it proves nothing either way.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TARGETS = {4: "192.0.2.1", 6: "2001:db8::1"}  # documentation ranges: never really reached when redirected
_RTF_UP, _RTF_REJECT, _RTF_LOCAL6 = 0x1, 0x200, 0x80000000


@dataclass(frozen=True)
class Route:
    net: Network
    dev: str


@dataclass(frozen=True)
class Target:
    """`address` to probe (None = cannot probe) and, either way, the human reason."""

    address: str | None
    reason: str


def parse_ipv4_routes(text: str) -> list[Route]:
    """/proc/net/route (the main table): usable, non-default routes."""
    out: list[Route] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            flags, dst, mask = int(f[3], 16), _le_ipv4(f[1]), _le_ipv4(f[7])
            net = ipaddress.IPv4Network(f"{dst}/{mask}", strict=False)
        except ValueError:
            continue
        if flags & _RTF_UP and not flags & _RTF_REJECT and net.prefixlen > 0:
            out.append(Route(net, f[0]))
    return out


def parse_ipv6_routes(text: str) -> list[Route]:
    """/proc/net/ipv6_route (every table): usable, non-default, non-local, non-multicast routes."""
    out: list[Route] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            net = ipaddress.IPv6Network((int(f[0], 16), int(f[1], 16)))
            flags = int(f[8], 16)
        except ValueError:
            continue
        if (flags & _RTF_UP and not flags & (_RTF_REJECT | _RTF_LOCAL6) and net.prefixlen > 0
                and not net.is_multicast and not net.is_loopback):
            out.append(Route(net, f[9]))
    return out


def _le_ipv4(hex_text: str) -> str:
    return str(ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(hex_text), "little")))


def _candidates(net: Network) -> list[Address]:
    """Two addresses inside `net`, neither the network/broadcast address nor the first/last host, where routers
    usually sit: the agent-UID probe really leaves the host (a SYN nobody should answer), the app probe never."""
    n = net.num_addresses
    if n <= 2:
        return list(net)
    first = min(n * 3 // 4 + 1, n - 2)
    return list(dict.fromkeys([net.network_address + first, net.network_address + max(1, first - 1)]))


def choose(family: int, routes: Sequence[Route], excluded: Iterable[Network], *,
           routable: Callable[[str], bool], is_local: Callable[[str], bool]) -> Target:
    """The first routable, non-local, non-excluded candidate: the documentation address, then route addresses."""
    excluded = [n for n in excluded if n.version == family]
    fam = f"IPv{family}"
    skipped_excluded: list[str] = []
    link_local: list[str] = []

    def usable(addr: Address) -> bool:
        if any(addr in n for n in excluded):
            skipped_excluded.append(str(addr))
            return False
        return routable(str(addr)) and not is_local(str(addr))

    preferred = ipaddress.ip_address(TARGETS[family])
    if usable(preferred):
        return Target(str(preferred), "documentation address, routed (normally by the default route)")
    problem = ("is inside --exclude-outbound-ips" if skipped_excluded else "has no route (no default route)")
    skipped_excluded.clear()
    for r in routes:
        if r.net.is_link_local:
            link_local.append(f"{r.net} dev {r.dev}")
            continue
        for addr in _candidates(r.net):
            if usable(addr):
                return Target(str(addr), f"{preferred} {problem}, so probing {addr}, "
                                         f"inside the route {r.net} dev {r.dev}")
    why = f"{fam} {preferred} {problem}"
    if skipped_excluded:
        why += f", routed addresses inside --exclude-outbound-ips skipped ({', '.join(skipped_excluded)})"
    if link_local:
        why += (f", only link-local routes left ({', '.join(link_local)}): a connection to a link-local address is "
                "bound to its interface and cannot be redirected to loopback, so it proves nothing")
    else:
        why += ", and no other route to a non-local address"
    head = "no usable address" if problem.startswith("is inside") else "no route for this family"
    return Target(None, f"cannot probe ({head}: {why})")


def _udp_ok(address: str, how: str) -> bool:
    """Whether a UDP socket may `connect` to / `bind` to `address`; neither sends a packet."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9)) if how == "connect" else s.bind((address, 0))
        except OSError:
            return False
    return True


def kernel_routable(address: str) -> bool:
    """Does the kernel have a route? A UDP connect runs the route lookup and sends nothing."""
    return _udp_ok(address, "connect")


def kernel_is_local(address: str) -> bool:
    """Is `address` one of this host's own (binding to a foreign address fails with EADDRNOTAVAIL)."""
    return _udp_ok(address, "bind")


def read_routes(family: int, proc: Path = Path("/proc/net")) -> list[Route]:
    name, parse = ("route", parse_ipv4_routes) if family == 4 else ("ipv6_route", parse_ipv6_routes)
    with contextlib.suppress(OSError):
        return parse((proc / name).read_text())
    return []


def target_for(family: int, excluded: Iterable[Network]) -> Target:
    """The probe address for `family` on this host (reads /proc and asks the kernel; changes nothing)."""
    return choose(family, read_routes(family), excluded, routable=kernel_routable, is_local=kernel_is_local)
