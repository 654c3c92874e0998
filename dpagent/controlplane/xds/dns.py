"""The DNS table the agent's DNS proxy serves, in the exact JSON the agent parses: `{"records": [{"name", "ips"}],
"ttl"}`. Pure; served to the agent through the dynconf listener (generators/dynconf.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from dpagent.controlplane.xds.names import dns_names

DEFAULT_TTL = 30


def dns_table(vips: Mapping[str, str], services: Iterable[str], ttl: int = DEFAULT_TTL,
              extra: Mapping[str, str] | None = None) -> bytes:
    """Records for every service in `services` that has a VIP, sorted by name; compact, key-sorted JSON so equal
    tables are equal bytes (the ETag is their hash).

    A service's own `<service>.mesh` name wins over another service's dotted alias of the same spelling, so a
    name never resolves to two services. `extra`: more name → IP records (MeshExternalService hostnames).
    """
    with_vip = sorted(s for s in set(services) if s in vips)
    names: dict[str, str] = {}
    for service in with_vip:
        names[dns_names(service)[0]] = vips[service]
    for service in with_vip:
        for alias in dns_names(service)[1:]:
            names.setdefault(alias, vips[service])
    for name, ip in (extra or {}).items():
        names.setdefault(name, ip)
    records = [{"name": n, "ips": [ip]} for n, ip in sorted(names.items())]
    return json.dumps({"records": records, "ttl": ttl}, separators=(",", ":"), sort_keys=True).encode()
