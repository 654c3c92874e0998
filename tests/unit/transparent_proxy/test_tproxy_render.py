"""Golden tests for the pure renderer: every case is (settings, host facts) → the exact dry-run output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transparent_proxy.config import build_config
from transparent_proxy.host import HostFacts, Tools
from transparent_proxy.render import dry_run_text, port_matches, render

TESTDATA = Path(__file__).parent / "testdata"
NFT = Tools("nft", "/usr/sbin/iptables-nft-save", "/usr/sbin/iptables-nft-restore",
            "/usr/sbin/ip6tables-nft-save", "/usr/sbin/ip6tables-nft-restore")
LEGACY = Tools("legacy", "/usr/sbin/iptables-legacy-save", "/usr/sbin/iptables-legacy-restore",
               "/usr/sbin/ip6tables-legacy-save", "/usr/sbin/ip6tables-legacy-restore")
NAMESERVERS = ("127.0.0.53", "10.0.0.2", "fd00::53")

CASES: dict[str, tuple[dict, dict]] = {
    # name: (flags, facts overrides)
    "defaults": ({}, {}),
    "defaults_ipv6": ({}, {"ipv6": True}),
    "ipv4_only_mode": ({"ip-family-mode": "ipv4"}, {"ipv6": True}),
    "legacy": ({}, {"tools": LEGACY, "ipv6": True}),
    "ports_overridden": ({"redirect-outbound-port": 12345, "redirect-inbound-port": 12346}, {}),
    "dns_resolv_conf": ({"redirect-dns": True}, {"ipv6": True, "nameservers": NAMESERVERS}),
    "dns_resolv_conf_no_v6_server": ({"redirect-dns": True}, {"ipv6": True, "nameservers": ("10.0.0.2",)}),
    "dns_capture_all": ({"redirect-all-dns-traffic": True}, {"ipv6": True}),
    "dns_no_conntrack_split": ({"redirect-all-dns-traffic": True, "skip-dns-conntrack-zone-split": True}, {}),
    "exclude_inbound_ports": ({"exclude-inbound-ports": "80,443,8000-8100"}, {}),
    "exclude_inbound_ports_with_ssh": ({"exclude-inbound-ports": "20-30"}, {}),
    "no_exclude_ssh": ({"exclude-ssh": False}, {}),
    "exclude_outbound_ports": ({"exclude-outbound-ports": "5432,6379"}, {}),
    "exclude_outbound_ports_many": ({"exclude-outbound-ports": ",".join(str(p) for p in range(1000, 1020))}, {}),
    "exclude_outbound_ports_for_uids": (
        {"exclude-outbound-ports-for-uids": ["106-108:53,3000-5000", "203:*:tcp", "303:3900"]}, {}),
    "exclude_ips_dualstack": ({"exclude-inbound-ips": "192.168.0.1,172.32.16.8/16,fe80::/10",
                               "exclude-outbound-ips": ["10.0.0.1,192.168.0.0/24", "fd00::/8"]}, {"ipv6": True}),
    "agent_named_user": ({"dpagent-user": "root"}, {"agent_uid": 0, "agent_user": "root", "loopback": "lo0"}),
}


def _render(flags: dict, overrides: dict) -> str:
    cfg = build_config({}, flags)
    facts = HostFacts(**{"agent_uid": 5678, "tools": NFT, **overrides})
    rendered = render(cfg, facts)
    text = dry_run_text({4: rendered.v4, 6: rendered.v6}, facts.tools, cfg.wait)
    return "".join(f"# warning: {w}\n" for w in rendered.warnings) + text


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    got = _render(*CASES[name])
    path = TESTDATA / f"{name}.golden"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(got)
        if os.environ.get("UPDATE_GOLDEN") != "1":
            pytest.fail(f"golden {path.name} was missing and has been written; re-run")
    assert got == path.read_text(), f"{path.name} differs; UPDATE_GOLDEN=1 rewrites it"


def test_deterministic() -> None:
    for name, case in CASES.items():
        assert _render(*case) == _render(*case), name


def test_every_rule_is_tagged_and_chains_prefixed() -> None:
    for case in CASES.values():
        for line in _render(*case).splitlines():
            if line.startswith("-A "):
                assert '--comment "dpagent/' in line, line
            if line.startswith(":"):
                assert line[1:].startswith("DPAGENT_"), line
                assert len(line[1:].split()[0]) <= 28, line  # kernel limit on chain names


def test_legacy_and_nft_differ_only_in_command() -> None:
    nft, legacy = _render({}, {"ipv6": True}), _render({}, {"ipv6": True, "tools": LEGACY})
    assert "--wait=5" in legacy and "--wait" not in nft
    strip = [line for line in nft.splitlines() if not line.startswith("###")]
    assert strip == [line for line in legacy.splitlines() if not line.startswith("###")]


def test_state_digest_changes_with_settings() -> None:
    a, b = _render({}, {}), _render({"exclude-outbound-ports": "1"}, {})
    digest = [line for line in a.splitlines() if "dpagent/state:" in line]
    assert digest and digest[0] not in b


def test_multiport_chunks_respect_kernel_limit() -> None:
    matches = port_matches("tcp", [(p, p) for p in range(1, 15)] + [(100, 200), (300, 400)])
    assert len(matches) == 2
    for m in matches:
        refs = m.split("--dports ")[1].split(",")
        assert sum(2 if ":" in r else 1 for r in refs) <= 15
