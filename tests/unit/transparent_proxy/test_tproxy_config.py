"""Config validation: every bad input is reported at once, names the option and says how to fix it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from transparent_proxy.cli import cli
from transparent_proxy.config import ConfigError, TProxyConfig, UidExclusion, build_config, load_file
from transparent_proxy.host import HostFacts, parse_resolv_conf, resolve_agent_uid
from transparent_proxy.ruleset import failed_line


def _problems(flags: dict, file: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(file or {}, flags)
    return e.value.problems


def test_defaults() -> None:
    cfg = build_config({}, {})
    assert cfg == TProxyConfig()
    assert (cfg.redirect_outbound_port, cfg.redirect_inbound_port, cfg.redirect_dns_port) == (15001, 15006, 15053)
    assert cfg.exclude_ssh and not cfg.dns_enabled and cfg.ip_family_mode == "dualstack"


@pytest.mark.parametrize(("flags", "needle"), [
    ({"redirect-outbound-port": "70000"}, "out of range"),
    ({"redirect-inbound-port": "http"}, "not a port number"),
    ({"exclude-inbound-ports": "22,0"}, "out of range"),
    ({"exclude-outbound-ports": "9000-8000"}, "reversed"),
    ({"exclude-outbound-ips": "10.0.0.300"}, "not an IPv4/IPv6 address or CIDR"),
    ({"exclude-inbound-ips": "fd00::/129"}, "not an IPv4/IPv6 address or CIDR"),
    ({"exclude-outbound-ports-for-uids": ["abc:80"]}, "not a UID"),
    ({"exclude-outbound-ports-for-uids": ["1000"]}, "UID[-UID]:PORTS"),
    ({"exclude-outbound-ports-for-uids": ["1000:80:icmp"]}, "protocol"),
    ({"exclude-outbound-ports-for-uids": ["1000:99999"]}, "out of range"),
    ({"redirect-dns": True, "redirect-all-dns-traffic": True}, "mutually exclusive"),
    ({"redirect-outbound-port": 15006}, "each redirect needs its own port"),
    ({"dpagent-user": "x", "dpagent-uid": 5}, "pass only one"),
    ({"ip-family-mode": "ipv6"}, "choose one of"),
    ({"ip-family-mode": "ipv4", "exclude-outbound-ips": "fd00::/8"}, "--ip-family-mode dualstack"),
    ({"backend": "python-iptables", "iptables-variant": "nft"}, "legacy"),
    ({"wait": "-1"}, "between 0 and 600"),
    ({"redirect-dns": "maybe"}, "not a boolean"),
])
def test_bad_input_names_problem_and_fix(flags: dict, needle: str) -> None:
    problems = _problems(flags)
    assert any(needle in p for p in problems), problems


def test_all_problems_reported_together() -> None:
    problems = _problems({"redirect-outbound-port": 0, "exclude-outbound-ips": "x", "exclude-inbound-ports": "y"})
    assert len(problems) == 3


def test_file_then_flags_precedence_and_key_spelling(tmp_path: Path) -> None:
    f = tmp_path / "tp.yaml"
    f.write_text("redirect_outbound_port: 16001\nexclude-outbound-ips: [10.0.0.0/8, 'fd00::/8']\n"
                 "redirect-dns: true\n")
    cfg = build_config(load_file(f), {"redirect-outbound-port": "17001"})
    assert cfg.redirect_outbound_port == 17001
    assert cfg.exclude_outbound_ips == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert cfg.redirect_dns


def test_unknown_file_key_and_bad_yaml(tmp_path: Path) -> None:
    assert any("unknown option 'redirect-port'" in p for p in _problems({}, {"redirect-port": 1}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")


def test_uid_exclusions_and_host_bits() -> None:
    cfg = build_config({}, {"exclude-outbound-ports-for-uids": ["106-108:53,3000-5000", "0:*:udp"],
                            "exclude-inbound-ips": "172.32.16.8/16"})
    assert cfg.exclude_outbound_ports_for_uids == (UidExclusion(106, 108, ((53, 53), (3000, 5000))),
                                                   UidExclusion(0, 0, (), ("udp",)))
    assert str(cfg.exclude_inbound_ips[0]) == "172.32.0.0/16"


def test_unknown_user_says_how_to_create_it() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_agent_uid(TProxyConfig(dpagent_user="no-such-user-dpagent-test"))
    assert "does not exist" in str(e.value) and "--dpagent-uid" in str(e.value)
    assert resolve_agent_uid(TProxyConfig(dpagent_user="4242"))[0] == 4242
    assert resolve_agent_uid(TProxyConfig(dpagent_user="root"))[0] == 0


def test_resolv_conf_parsing() -> None:
    text = "# c\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\nnameserver 127.0.0.53\n"
    assert parse_resolv_conf(text) == ("127.0.0.53", "fe80::1")


def test_failed_line_parsing() -> None:
    assert failed_line("iptables-nft-restore: line 3 failed: Chain already exists.\n") == (3, "Chain already exists.")
    n, reason = failed_line("iptables-restore v1.8.9 (legacy): invalid port/service `99999' specified\n"
                            "Error occurred at line: 7\nTry `iptables-restore -h' for more information.\n")
    assert (n, reason) == (7, "invalid port/service `99999' specified")
    assert failed_line("iptables-restore: line 2 failed\n")[0] == 2


def test_cli_bad_input_exits_2_and_changes_nothing() -> None:
    res = CliRunner().invoke(cli, ["install", "--dry-run", "--exclude-outbound-ips", "1.2.3.4/40",
                                   "--redirect-inbound-port", "0"])
    assert res.exit_code == 2
    assert "1.2.3.4/40" in res.output and "--redirect-inbound-port" in res.output


def test_facts_defaults_are_plain() -> None:
    assert HostFacts(agent_uid=1).loopback == "lo"


def test_iptc_backend_missing_names_the_extra() -> None:
    try:
        import iptc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        from transparent_proxy.iptc_backend import load_iptc

        with pytest.raises(ConfigError, match=r"pip install 'dpagent\[iptc\]'"):
            load_iptc()
