"""Virtual IPs for mesh services: a pure, stable allocator. The CP persists its result (kind `VirtualIPs`) so a
service keeps its address across restarts and DNS answers cached by apps stay valid."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from dpagent.errors import ConfigError

KIND = "VirtualIPs"
NAME = "vips"
DEFAULT_CIDR = "240.0.0.0/4"


class VipRangeExhausted(ConfigError):
    """More services than addresses in the VIP range: the operator must widen `--vip-cidr`."""


def parse_cidr(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as e:
        raise ConfigError(f"VIP range {cidr!r} is not a CIDR ({e}); use e.g. 240.0.0.0/4 (--vip-cidr)") from None


def allocate(existing: Mapping[str, str], services: Iterable[str], cidr: str = DEFAULT_CIDR) -> dict[str, str]:
    """service → VIP for exactly `services`.

    Stable: a service keeps the address it has in `existing` while it exists and that address is still valid (in
    `cidr`, not claimed twice). New services, in sorted order, get the lowest free addresses; the network and
    broadcast addresses are never handed out. Deterministic: the same inputs always give the same map.
    Raises VipRangeExhausted when the range has no room left for every service.
    """
    net = parse_cidr(cidr)
    first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    wanted = sorted(set(services))
    out: dict[str, str] = {}
    used: set[int] = set()
    for service in wanted:  # sorted, so a duplicated address goes to the same service every time
        try:
            ip = ipaddress.ip_address(existing.get(service, ""))
        except ValueError:
            continue
        if ip.version == net.version and first <= int(ip) <= last and int(ip) not in used:
            out[service] = str(ip)
            used.add(int(ip))
    missing = [s for s in wanted if s not in out]
    if len(missing) > max(0, last - first + 1) - len(used):
        raise VipRangeExhausted(
            f"the VIP range {net} has {max(0, last - first + 1)} usable addresses but {len(wanted)} services need "
            f"one; pass a wider --vip-cidr (KUMA_DNS_SERVER_CIDR)")
    candidate = first
    for service in missing:
        while candidate in used:
            candidate += 1
        out[service] = str(ipaddress.ip_address(candidate))
        used.add(candidate)
    return dict(sorted(out.items()))


def vips_doc(mesh: str, vips: Mapping[str, str]) -> dict[str, object]:
    """The stored form: one document per mesh."""
    return {"type": KIND, "mesh": mesh, "name": NAME, "vips": dict(sorted(vips.items()))}


def vips_from_doc(doc: Mapping[str, object] | None) -> dict[str, str]:
    """Tolerant read of the stored form: anything malformed is dropped and simply re-allocated."""
    raw = (doc or {}).get("vips")
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}
