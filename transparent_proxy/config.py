"""What the user asked for: a frozen, validated description of the transparent-proxy ruleset.

Values come from defaults < a YAML file < command-line flags; `build_config` merges them and reports every
bad value at once (each message names the problem and the fix), so a typo never half-installs rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dpagent import safe_yaml
from dpagent.durations import parse_duration

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]

DEFAULT_USER = "dpagent"
SSH_PORT = 22


class ConfigError(ValueError):
    """Every problem found in the user's input; the CLI prints them all and exits non-zero."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


@dataclass(frozen=True)
class UidExclusion:
    """Outbound traffic from these UIDs to these ports is never redirected (e.g. a co-located database client)."""

    uid_low: int
    uid_high: int
    ports: tuple[PortRange, ...]  # empty = every port
    protocols: tuple[str, ...] = ("tcp", "udp")


@dataclass(frozen=True)
class TProxyConfig:
    """User intent. Defaults follow Kuma's (15001/15006/15053, dualstack, DNS off), plus SSH (22) excluded from
    inbound redirection unless `exclude_ssh` is off: being locked out of a VM is the classic first-install failure."""

    redirect_outbound_port: int = 15001
    redirect_inbound_port: int = 15006
    redirect_dns_port: int = 15053
    dpagent_user: str | None = None
    dpagent_uid: int | None = None
    redirect_dns: bool = False
    redirect_all_dns_traffic: bool = False
    skip_dns_conntrack_zone_split: bool = False
    exclude_inbound_ports: tuple[PortRange, ...] = ()
    exclude_outbound_ports: tuple[PortRange, ...] = ()
    exclude_outbound_ports_for_uids: tuple[UidExclusion, ...] = ()
    exclude_inbound_ips: tuple[IPNetwork, ...] = ()
    exclude_outbound_ips: tuple[IPNetwork, ...] = ()
    exclude_ssh: bool = True
    ip_family_mode: Literal["dualstack", "ipv4"] = "dualstack"
    wait: int = 5
    max_retries: int = 4
    sleep_between_retries: float = 2.0
    backend: Literal["iptables-restore", "python-iptables"] = "iptables-restore"
    iptables_variant: Literal["auto", "nft", "legacy"] = "auto"
    resolv_conf: Path = field(default=Path("/etc/resolv.conf"))

    @property
    def dns_enabled(self) -> bool:
        return self.redirect_dns or self.redirect_all_dns_traffic



# --- parsing helpers: each returns (value, problems) so callers can collect every violation -----------------

def _port(raw: object, key: str, problems: list[str]) -> int | None:
    try:
        value = int(str(raw).strip())
    except ValueError:
        problems.append(f"{key}: {raw!r} is not a port number; use an integer between 1 and 65535")
        return None
    if not 1 <= value <= 65535:
        problems.append(f"{key}: port {value} is out of range; use an integer between 1 and 65535")
        return None
    return value


def _items(raw: object) -> list[str]:
    """Accept a comma-separated string, a list of strings/ints, or repeated flags (a tuple of such strings)."""
    if raw is None:
        return []
    if isinstance(raw, str | int):
        raw = [raw]
    out: list[str] = []
    for item in raw:  # type: ignore[union-attr]
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


def parse_port_ranges(raw: object, key: str, problems: list[str]) -> tuple[PortRange, ...]:
    """'22,8080,9000-9100' → ((22, 22), (8080, 8080), (9000, 9100)); sorted and de-duplicated."""
    ranges: set[PortRange] = set()
    for item in _items(raw):
        low_s, sep, high_s = item.partition("-")
        low = _port(low_s, key, problems)
        high = _port(high_s, key, problems) if sep else low
        if low is None or high is None:
            continue
        if low > high:
            problems.append(f"{key}: range {item!r} is reversed; write it as {high}-{low}")
            continue
        ranges.add((low, high))
    return tuple(sorted(ranges))


def parse_networks(raw: object, key: str, problems: list[str]) -> tuple[IPNetwork, ...]:
    """Addresses or CIDRs of either family; host bits are cleared (as iptables would) rather than rejected."""
    nets: set[IPNetwork] = set()
    for item in _items(raw):
        try:
            nets.add(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(f"{key}: {item!r} is not an IPv4/IPv6 address or CIDR; use e.g. 10.0.0.0/8 or fd00::/8")
    return tuple(sorted(nets, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def parse_uid_exclusions(raw: object, key: str, problems: list[str]) -> tuple[UidExclusion, ...]:
    """Entries 'UID[-UID]:PORTS[:PROTO]', e.g. '106-108:53,3000-5000' or '0:*:tcp'; PORTS '*' means all ports.

    The UID comes first (unlike Kuma's 'ports:uids') because it is the subject of the exclusion.
    Entries are separated by spaces or given as repeated flags, since PORTS itself contains commas.
    """
    out: list[UidExclusion] = []
    entries: list[str] = []
    for item in [raw] if isinstance(raw, str | int) else list(raw or ()):  # type: ignore[arg-type]
        entries.extend(str(item).split())
    for entry in entries:
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            problems.append(f"{key}: {entry!r} must look like UID[-UID]:PORTS[:tcp|udp], e.g. 1001:5432 or 100-110:*")
            continue
        uid_s, ports_s = parts[0], parts[1]
        proto = parts[2].lower() if len(parts) == 3 else "all"
        low_s, sep, high_s = uid_s.partition("-")
        if not (low_s.isdigit() and (not sep or high_s.isdigit())):
            problems.append(f"{key}: {uid_s!r} in {entry!r} is not a UID or UID range; use numbers such as 1001 "
                            "or 100-110 (look a user up with `id -u NAME`)")
            continue
        low, high = int(low_s), int(high_s) if sep else int(low_s)
        if low > high:
            problems.append(f"{key}: UID range {uid_s!r} is reversed; write it as {high}-{low}")
            continue
        if proto not in ("tcp", "udp", "all"):
            problems.append(f"{key}: protocol {proto!r} in {entry!r} is unknown; use tcp, udp or omit it for both")
            continue
        before = len(problems)
        ports = () if ports_s == "*" else parse_port_ranges(ports_s, key, problems)
        if len(problems) == before:
            protocols = ("tcp", "udp") if proto == "all" else (proto,)
            out.append(UidExclusion(low, high, ports, protocols))
    return tuple(out)


def _bool(raw: object, key: str, problems: list[str]) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    problems.append(f"{key}: {raw!r} is not a boolean; use true or false")
    return False


_CHOICES: dict[str, tuple[str, ...]] = {
    "ip-family-mode": ("dualstack", "ipv4"),
    "backend": ("iptables-restore", "python-iptables"),
    "iptables-variant": ("auto", "nft", "legacy"),
}
_BOOLS = ("redirect-dns", "redirect-all-dns-traffic", "skip-dns-conntrack-zone-split", "exclude-ssh")
_PORTS = ("redirect-outbound-port", "redirect-inbound-port", "redirect-dns-port")
KNOWN_KEYS = frozenset({
    *_CHOICES, *_BOOLS, *_PORTS, "dpagent-user", "dpagent-uid", "exclude-inbound-ports", "exclude-outbound-ports",
    "exclude-outbound-ports-for-uids", "exclude-inbound-ips", "exclude-outbound-ips", "wait", "max-retries",
    "sleep-between-retries", "resolv-conf",
})


def load_file(path: Path) -> dict[str, Any]:
    """Read the YAML config file; keys are the long flag names (dashes or underscores)."""
    try:
        data = safe_yaml.load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError([f"--config: cannot read {path}: {e.strerror}; check the path and permissions"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"--config: {path} is not valid YAML ({e}); fix the syntax"]) from e
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {path} must contain a mapping of option names to values"])
    return data


def _normalise(source: Mapping[str, Any], origin: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in source.items():
        name = str(key).replace("_", "-")
        if name not in KNOWN_KEYS:
            problems.append(f"{origin}: unknown option {key!r}; valid keys are: {', '.join(sorted(KNOWN_KEYS))}")
            continue
        out[name] = value
    return out


def build_config(file_values: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None) -> TProxyConfig:
    """Merge file < flags (None values in `flags` mean "not given"), validate everything, raise ConfigError."""
    problems: list[str] = []
    merged = _normalise(file_values or {}, "config file", problems)
    merged.update(_normalise({k: v for k, v in (flags or {}).items() if v is not None}, "flag", problems))
    kw: dict[str, Any] = {}

    for key in _PORTS:
        if key in merged and (port := _port(merged[key], f"--{key}", problems)) is not None:
            kw[key.replace("-", "_")] = port
    for key in _BOOLS:
        if key in merged:
            kw[key.replace("-", "_")] = _bool(merged[key], f"--{key}", problems)
    for key, choices in _CHOICES.items():
        if key in merged:
            if merged[key] not in choices:
                problems.append(f"--{key}: {merged[key]!r} is not valid; choose one of {', '.join(choices)}")
            else:
                kw[key.replace("-", "_")] = merged[key]
    for key in ("exclude-inbound-ports", "exclude-outbound-ports"):
        if key in merged:
            kw[key.replace("-", "_")] = parse_port_ranges(merged[key], f"--{key}", problems)
    for key in ("exclude-inbound-ips", "exclude-outbound-ips"):
        if key in merged:
            kw[key.replace("-", "_")] = parse_networks(merged[key], f"--{key}", problems)
    if "exclude-outbound-ports-for-uids" in merged:
        kw["exclude_outbound_ports_for_uids"] = parse_uid_exclusions(
            merged["exclude-outbound-ports-for-uids"], "--exclude-outbound-ports-for-uids", problems)
    for key, low, high in (("wait", 0, 600), ("max-retries", 0, 100), ("dpagent-uid", 0, 2**32 - 2)):
        if key in merged:
            try:
                value = int(merged[key])
                if not low <= value <= high:
                    raise ValueError
                kw[key.replace("-", "_")] = value
            except (TypeError, ValueError):
                problems.append(f"--{key}: {merged[key]!r} must be an integer between {low} and {high}")
    if "sleep-between-retries" in merged:
        try:
            kw["sleep_between_retries"] = parse_duration(merged["sleep-between-retries"])
        except (TypeError, ValueError) as e:
            problems.append(f"--sleep-between-retries: {e} (Kuma's default is 2s)")
    if "dpagent-user" in merged:
        kw["dpagent_user"] = str(merged["dpagent-user"])
    if "resolv-conf" in merged:
        kw["resolv_conf"] = Path(str(merged["resolv-conf"]))

    cfg = TProxyConfig(**kw)
    problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _cross_checks(cfg: TProxyConfig) -> list[str]:
    """Combinations that are each valid alone but contradict each other."""
    problems: list[str] = []
    if cfg.redirect_dns and cfg.redirect_all_dns_traffic:
        problems.append("--redirect-dns and --redirect-all-dns-traffic are mutually exclusive: the second already "
                        "captures every UDP/53 packet; pass only one of them")
    ports = {"--redirect-outbound-port": cfg.redirect_outbound_port, "--redirect-inbound-port":
             cfg.redirect_inbound_port}
    if cfg.dns_enabled:
        ports["--redirect-dns-port"] = cfg.redirect_dns_port
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            problems.append(f"{flag} and {seen[port]} are both {port}; each redirect needs its own port")
        seen[port] = flag
    if cfg.dpagent_user is not None and cfg.dpagent_uid is not None:
        problems.append("--dpagent-user and --dpagent-uid both given; pass only one (a numeric --dpagent-user "
                        "is taken as a UID)")
    if cfg.backend == "python-iptables" and cfg.iptables_variant == "nft":
        problems.append("--backend python-iptables only drives the legacy iptables backend (libiptc cannot see "
                        "nf_tables); use --backend iptables-restore for nft, or --iptables-variant legacy")
    if cfg.ip_family_mode == "ipv4":
        v6 = [str(n) for n in (*cfg.exclude_inbound_ips, *cfg.exclude_outbound_ips) if n.version == 6]
        if v6:
            problems.append(f"IPv6 exclusions {', '.join(v6)} given with --ip-family-mode ipv4; drop them or use "
                            "--ip-family-mode dualstack")
    return problems
