"""Pure: (TProxyConfig, HostFacts) → iptables-restore text per address family. No I/O, clock or randomness.

Built-in chains only get one tagged jump each; all logic lives in DPAGENT_* chains, so cleanup is "flush and
delete our chains, delete our tagged jumps" whatever config installed them. Rule order and meaning follow
Kuma's ruleset (reference §1.5–1.7): loop avoidance by owner UID and the 127.0.0.6/::6 passthrough source.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from transparent_proxy.config import SSH_PORT, PortRange, TProxyConfig
from transparent_proxy.host import HostFacts, Tools

CHAIN_PREFIX = "DPAGENT_"
TAG = "dpagent/"
INBOUND = "DPAGENT_INBOUND"
INBOUND_REDIRECT = "DPAGENT_INBOUND_REDIRECT"
OUTBOUND = "DPAGENT_OUTBOUND"
OUTBOUND_REDIRECT = "DPAGENT_OUTBOUND_REDIRECT"
DNS = "DPAGENT_DNS"
DNS_CT_OUTPUT = "DPAGENT_DNS_CT_OUTPUT"
DNS_CT_PREROUTING = "DPAGENT_DNS_CT_PREROUTING"
STATE = "DPAGENT_STATE"
STATE_PURPOSE = "state:"
MULTIPORT_LIMIT = 15  # port references per multiport match; a range counts twice

_ADDR = {4: {"passthrough": "127.0.0.6/32", "localhost": "127.0.0.1/32"},
         6: {"passthrough": "::6/128", "localhost": "::1/128"}}


@dataclass
class _Table:
    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain(self, name: str) -> None:
        if name not in self.chains:
            self.chains.append(name)

    def add(self, chain: str, spec: str, purpose: str, target: str) -> None:
        parts = [f"-A {chain}", spec, f'-m comment --comment "{TAG}{purpose}"', f"-j {target}"]
        self.rules.append(" ".join(p for p in parts if p))

    def text(self) -> str:
        lines = [f"*{self.name}", *(f":{c} - [0:0]" for c in self.chains), *self.rules, "COMMIT"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Rendered:
    """Restore text per family (None = that family gets no rules) plus warnings for the operator."""

    v4: str
    v6: str | None
    warnings: tuple[str, ...] = ()

    def family(self, family: int) -> str | None:
        return self.v4 if family == 4 else self.v6


def _port_token(r: PortRange, sep: str = ":") -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}{sep}{r[1]}"


def port_matches(proto: str, ranges: Sequence[PortRange]) -> list[str]:
    """`-p P --dport X` for one port/range, else multiport chunks within the 15-reference kernel limit."""
    if len(ranges) == 1:
        return [f"-p {proto} --dport {_port_token(ranges[0])}"]
    chunks: list[list[PortRange]] = [[]]
    used = 0
    for r in ranges:
        cost = 1 if r[0] == r[1] else 2
        if used + cost > MULTIPORT_LIMIT:
            chunks.append([])
            used = 0
        chunks[-1].append(r)
        used += cost
    return [f"-p {proto} -m multiport --dports {','.join(_port_token(r) for r in c)}" for c in chunks]


def _nameservers(facts: HostFacts, family: int) -> list[str]:
    return [s for s in facts.nameservers if ipaddress.ip_address(s).version == family]


def render_family(cfg: TProxyConfig, facts: HostFacts, family: int) -> tuple[str, list[str]]:
    """One family's restore text (raw then nat) and its warnings."""
    warnings: list[str] = []
    uid, lo = facts.agent_uid, facts.loopback
    addr = _ADDR[family]
    raw, nat = _Table("raw"), _Table("nat")

    servers = _nameservers(facts, family)
    dns = cfg.redirect_all_dns_traffic or (cfg.redirect_dns and bool(servers))
    if cfg.redirect_dns and not servers:
        warnings.append(f"--redirect-dns: {cfg.resolv_conf} lists no IPv{family} nameserver, so IPv{family} DNS is "
                        "not redirected; use --redirect-all-dns-traffic to capture every UDP/53 packet")

    # ---- nat: inbound ------------------------------------------------------------------------------------
    for c in (INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTBOUND_REDIRECT):
        nat.chain(c)
    if dns:
        nat.chain(DNS)
    nat.add("PREROUTING", "-p tcp", "inbound-capture", INBOUND)
    nat.add("OUTPUT", "", "outbound-capture", OUTBOUND)
    for net in (n for n in cfg.exclude_inbound_ips if n.version == family):
        nat.add(INBOUND, f"-s {net}", "exclude-inbound-ip", "RETURN")
    user_in = list(cfg.exclude_inbound_ports)
    if cfg.exclude_ssh and not any(lo_ <= SSH_PORT <= hi for lo_, hi in user_in):
        nat.add(INBOUND, f"-p tcp --dport {SSH_PORT}", "exclude-inbound-ssh", "RETURN")
    for m in port_matches("tcp", user_in) if user_in else []:
        nat.add(INBOUND, m, "exclude-inbound-port", "RETURN")
    nat.add(INBOUND, "-p tcp", "inbound-redirect", INBOUND_REDIRECT)
    nat.add(INBOUND_REDIRECT, "-p tcp", f"inbound-to-port-{cfg.redirect_inbound_port}",
            f"REDIRECT --to-ports {cfg.redirect_inbound_port}")

    # ---- nat: outbound -----------------------------------------------------------------------------------
    for ex in cfg.exclude_outbound_ports_for_uids:
        owner = f"-m owner --uid-owner {ex.uid_low}" + (f"-{ex.uid_high}" if ex.uid_high != ex.uid_low else "")
        for proto in ex.protocols:
            matches = port_matches(proto, ex.ports) if ex.ports else [f"-p {proto}"]
            for m in matches:
                nat.add(OUTBOUND, f"{m} {owner}", "exclude-outbound-uid", "RETURN")
    for net in (n for n in cfg.exclude_outbound_ips if n.version == family):
        nat.add(OUTBOUND, f"-d {net}", "exclude-outbound-ip", "RETURN")
    if dns:
        nat.add(OUTBOUND, "-p udp --dport 53", "dns-capture", DNS)
        nat.add(OUTBOUND, f"-p tcp --dport 53 -m owner ! --uid-owner {uid}", "dns-tcp-bypass", "RETURN")
    nat.add(OUTBOUND, "! -p tcp", "non-tcp-return", "RETURN")
    for m in port_matches("tcp", cfg.exclude_outbound_ports) if cfg.exclude_outbound_ports else []:
        nat.add(OUTBOUND, m, "exclude-outbound-port", "RETURN")
    nat.add(OUTBOUND, f"-s {addr['passthrough']} -o {lo}", "passthrough-source-return", "RETURN")
    nat.add(OUTBOUND, f"! -d {addr['localhost']} -o {lo} -p tcp -m owner --uid-owner {uid}",
            "agent-to-local-inbound", INBOUND)
    nat.add(OUTBOUND, f"-o {lo} -p tcp -m owner ! --uid-owner {uid}", "app-loopback-return", "RETURN")
    nat.add(OUTBOUND, f"-m owner --uid-owner {uid}", "agent-return", "RETURN")
    nat.add(OUTBOUND, f"-d {addr['localhost']}", "localhost-return", "RETURN")
    nat.add(OUTBOUND, "", "outbound-redirect", OUTBOUND_REDIRECT)
    nat.add(OUTBOUND_REDIRECT, "-p tcp", f"outbound-to-port-{cfg.redirect_outbound_port}",
            f"REDIRECT --to-ports {cfg.redirect_outbound_port}")

    # ---- DNS: nat redirect + raw conntrack zones ---------------------------------------------------------
    if dns:
        redirect = f"REDIRECT --to-ports {cfg.redirect_dns_port}"
        nat.add(DNS, f"-m owner --uid-owner {uid}", "dns-agent-return", "RETURN")
        if cfg.redirect_all_dns_traffic:
            nat.add(DNS, "-p udp", "dns-redirect", redirect)
        else:
            for s in servers:
                nat.add(DNS, f"-d {s} -p udp", "dns-redirect", redirect)
        if not cfg.skip_dns_conntrack_zone_split:
            _conntrack_zones(raw, cfg, uid, servers, addr["localhost"])
    nat.chain(STATE)
    body = (raw.text() if raw.rules else "") + nat.text()
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    nat.add(STATE, "", f"{STATE_PURPOSE}{digest}", "RETURN")
    return (raw.text() if raw.rules else "") + nat.text(), warnings


def _conntrack_zones(raw: _Table, cfg: TProxyConfig, uid: int, servers: list[str], localhost: str) -> None:
    """Zone 1 = agent↔upstream resolver, zone 2 = app↔agent, so the two UDP flows never share a conntrack entry
    (otherwise a burst of app queries can leak straight to the upstream, bypassing the DNS proxy)."""
    raw.chain(DNS_CT_OUTPUT)
    raw.chain(DNS_CT_PREROUTING)
    raw.add("OUTPUT", "-p udp", "dns-conntrack-output", DNS_CT_OUTPUT)
    raw.add("PREROUTING", "-p udp", "dns-conntrack-prerouting", DNS_CT_PREROUTING)
    raw.add(DNS_CT_OUTPUT, f"-p udp --dport 53 -m owner --uid-owner {uid}", "dns-zone-agent-upstream", "CT --zone 1")
    raw.add(DNS_CT_OUTPUT, f"-p udp --sport {cfg.redirect_dns_port} -m owner --uid-owner {uid}",
            "dns-zone-agent-replies", "CT --zone 2")
    if cfg.redirect_all_dns_traffic:
        raw.add(DNS_CT_OUTPUT, "-p udp --dport 53", "dns-zone-app-queries", "CT --zone 2")
        raw.add(DNS_CT_PREROUTING, "-p udp --sport 53", "dns-zone-upstream-replies", "CT --zone 1")
        return
    for s in servers:
        raw.add(DNS_CT_OUTPUT, f"-d {s} -p udp --dport 53", "dns-zone-app-queries", "CT --zone 2")
    for s in servers:
        if ipaddress.ip_address(s).is_loopback:  # a local resolver (systemd-resolved) answers through OUTPUT
            raw.add(DNS_CT_OUTPUT, f"-s {s} -d {localhost} -p udp --sport 53", "dns-zone-local-resolver-replies",
                    "CT --zone 1")
    for s in servers:
        raw.add(DNS_CT_PREROUTING, f"-s {s} -p udp --sport 53", "dns-zone-upstream-replies", "CT --zone 1")


def render(cfg: TProxyConfig, facts: HostFacts) -> Rendered:
    """Both families; IPv6 only in dualstack mode on a host with IPv6 (facts.ipv6)."""
    v4, warnings = render_family(cfg, facts, 4)
    v6: str | None = None
    if cfg.ip_family_mode == "dualstack" and facts.ipv6:
        v6, w6 = render_family(cfg, facts, 6)
        warnings += w6
    return Rendered(v4, v6, tuple([*facts.warnings, *warnings]))


def restore_argv(tools: Tools, family: int, *, wait: int, test: bool = False, noflush: bool = True) -> list[str]:
    """The restore command; `--wait` only for legacy (nft takes no xtables lock)."""
    binary = tools.restore(family)
    if binary is None:
        raise ValueError(f"no ip{'6' if family == 6 else ''}tables-restore for {tools.variant}")
    argv = [binary]
    if noflush:
        argv.append("--noflush")
    if tools.variant == "legacy" and wait > 0:
        argv.append(f"--wait={wait}")
    if test:
        argv.append("--test")
    return argv


def dry_run_text(texts: dict[int, str | None], tools: Tools, wait: int) -> str:
    """What --dry-run prints: per family, the exact command and the exact text fed to its stdin."""
    out: list[str] = []
    for family in (4, 6):
        text = texts.get(family)
        if text is None:
            continue
        out.append(f"### IPv{family}: {' '.join(restore_argv(tools, family, wait=wait))} ###")
        out.append(text.rstrip("\n"))
    return "\n".join(out) + "\n"
