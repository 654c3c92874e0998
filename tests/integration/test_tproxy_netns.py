"""Real-kernel tests of transparent_proxy inside throwaway network namespaces, for iptables-nft and -legacy.

Never touches the host's own rules: every iptables command runs under `ip netns exec dpagent-t-<random>`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tproxy_probe import inbound_probe

from transparent_proxy import ruleset
from transparent_proxy.apply import ApplyError, install
from transparent_proxy.config import build_config
from transparent_proxy.host import tools_for
from transparent_proxy.render import render
from transparent_proxy.runner import SubprocessRunner

pytestmark = [pytest.mark.root, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
AGENT_UID, APP_UID = 5678, 4321
VARIANTS = ["nft", "legacy"]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and run iptables"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is unavailable (install iproute2)"
    if not (shutil.which("iptables-nft-restore") and shutil.which("iptables-legacy-restore")):
        return "iptables-nft-restore / iptables-legacy-restore missing (apt-get install iptables)"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def sh(*cmd: str, ns: str | None = None, check: bool = True, input: str | None = None) -> str:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} failed: {res.stderr}")
    return res.stdout


def tp(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "transparent_proxy.cli", *args],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(f"transparent-proxy {args} exit {res.returncode}: {res.stdout}{res.stderr}")
    return res


@contextlib.contextmanager
def veth_pair(*, default_routes: bool = True, global_v6: bool = True) -> Iterator[tuple[str, str]]:
    """Namespaces A (peer, 10.200.0.1) and B (the VM, 10.200.0.2) joined by veth; B routes everything to A.
    Without `default_routes` B only has its connected routes; without `global_v6` only IPv6 link-local (most VMs)."""
    tag = secrets.token_hex(3)
    a, b = f"dpagent-t-{tag}a", f"dpagent-t-{tag}b"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB", ns=a)
        sh("ip", "link", "set", "vB", "netns", b, ns=a)
        for ns, dev, v4, v6 in ((a, "vA", "10.200.0.1/24", "fd00:200::1/64"), (b, "vB", "10.200.0.2/24",
                                                                               "fd00:200::2/64")):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", v4, "dev", dev, ns=ns)
            if global_v6:
                sh("ip", "-6", "addr", "add", v6, "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        if default_routes:
            sh("ip", "route", "add", "default", "via", "10.200.0.1", ns=b)
            sh("ip", "-6", "route", "add", "default", "via", "fd00:200::1", ns=b)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    with veth_pair() as namespaces:
        yield namespaces


@pytest.fixture
def ns(pair: tuple[str, str]) -> str:
    return pair[1]


def snapshot(ns: str, variant: str, family: int = 4) -> str:
    """iptables-save without '#' lines, counters, or tables that hold nothing (kernel leaves them loaded)."""
    out = sh(f"ip{'6' if family == 6 else ''}tables-{variant}-save", ns=ns)
    tables, cur = [], []
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        cur.append(line.split(" [")[0] if line.startswith(":") else line)
        if line == "COMMIT":
            body = cur[1:-1]
            if any(x.startswith("-A") or not x.endswith("ACCEPT") for x in body):
                tables.append("\n".join(cur))
            cur = []
    return "\n".join(tables) + "\n"


FOREIGN_RULES = [
    ("-t", "nat", "-N", "FOREIGN"), ("-t", "nat", "-A", "FOREIGN", "-p", "tcp", "--dport", "53", "-j", "RETURN"),
    ("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "FOREIGN"),
    ("-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5000", "-m", "comment", "--comment",
     "someone's rule", "-j", "RETURN"),
    ("-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT"),
    ("-t", "filter", "-A", "INPUT", "-s", "192.0.2.0/24", "-j", "DROP"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_install_idempotent_uninstall_restores_foreign(ns: str, variant: str, tmp_path: Path) -> None:
    for rule in FOREIGN_RULES:
        sh(f"iptables-{variant}", *rule, ns=ns)
        sh(f"ip6tables-{variant}", *[x.replace("192.0.2.0/24", "2001:db8::/32") for x in rule], ns=ns)
    before = {f: snapshot(ns, variant, f) for f in (4, 6)}
    args = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", variant,
            "--redirect-all-dns-traffic", "--exclude-outbound-ips", "10.0.0.0/8,fd00::/8"]
    tp(ns, "install", *args, "--backup-dir", str(tmp_path))
    first = {f: sh(f"ip{'6' if f == 6 else ''}tables-{variant}-save", ns=ns) for f in (4, 6)}
    for f in (4, 6):
        for chain in ("DPAGENT_INBOUND", "DPAGENT_OUTBOUND", "DPAGENT_INBOUND_REDIRECT", "DPAGENT_OUTBOUND_REDIRECT",
                      "DPAGENT_DNS", "DPAGENT_DNS_CT_OUTPUT"):
            assert f":{chain} -" in first[f], (f, chain)
    assert "someone's rule" in first[4] or "someone\\'s rule" in first[4]
    res = tp(ns, "install", *args, "--backup-dir", str(tmp_path))
    assert "nothing changed" in res.stdout
    for f in (4, 6):
        again = sh(f"ip{'6' if f == 6 else ''}tables-{variant}-save", ns=ns)
        strip = lambda t: [ln.split(" [")[0] for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
        assert strip(again) == strip(first[f])
    assert "matches settings: yes" in tp(ns, "status", *args).stdout
    tp(ns, "uninstall", "--iptables-variant", variant, "--backup-dir", str(tmp_path))
    for f in (4, 6):
        assert snapshot(ns, variant, f) == before[f]
    assert "nothing changed" in tp(ns, "uninstall", "--iptables-variant", variant).stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_failing_install_leaves_previous_ruleset(ns: str, variant: str, tmp_path: Path) -> None:
    runner = SubprocessRunner(prefix=("ip", "netns", "exec", ns))
    tools = tools_for(runner, variant)  # type: ignore[arg-type]
    assert tools is not None
    from transparent_proxy.host import HostFacts

    facts = HostFacts(agent_uid=AGENT_UID, tools=tools, ipv6=False)
    sh(f"iptables-{variant}", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7", "-j", "RETURN", ns=ns)
    install(build_config({}, {}), facts, runner, sleep=lambda s: None)
    before = snapshot(ns, variant)
    cfg = build_config({}, {"exclude-outbound-ports": "5432"})
    rendered = render(cfg, facts)
    bad_rule = '-A DPAGENT_OUTBOUND -p udp -m comment --comment "dpagent/bad" -j CT --zone 1'  # CT is raw-only
    bad = replace(rendered, v4=rendered.v4.replace("-A DPAGENT_STATE", bad_rule + "\n-A DPAGENT_STATE"))
    with pytest.raises(ApplyError) as e:
        install(cfg, facts, runner, rendered=bad, sleep=lambda s: None, backup_dir=tmp_path)
    # nft names the rule; legacy's kernel rejects the whole table at COMMIT and the error says so
    assert e.value.rule == (bad_rule if variant == "nft" else "COMMIT"), str(e.value)
    assert variant == "nft" or "table nat" in str(e.value)
    assert e.value.step in ("test", "restore") and (e.value.step == "test" or e.value.rolled_back)
    assert snapshot(ns, variant) == before




@pytest.mark.parametrize("variant", VARIANTS)
def test_redirection_really_happens(pair: tuple[str, str], variant: str, tmp_path: Path) -> None:
    peer, ns = pair
    args = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", variant, "--exclude-outbound-ports", "5432"]
    tp(ns, "install", *args, "--backup-dir", str(tmp_path))
    # outbound: app UID redirected with SO_ORIGINAL_DST, agent UID and excluded port not; agent→local → inbound
    res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "2", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("PASS") == 8 and "ipv6" in res.stdout, res.stdout  # both families
    # inbound from the peer namespace: app port → 15006 with the original destination; SSH (22) untouched
    seen = inbound_probe(ns, peer)
    assert [15006, "10.200.0.2:8080"] in seen, seen
    assert [22, None] in seen or any(p == 22 for p, _ in seen), seen
    assert not any(p == 15006 and o and o.endswith(":22") for p, o in seen), seen
    tp(ns, "uninstall", "--iptables-variant", variant)


def test_uninstalled_host_fails_verify(ns: str) -> None:
    res = tp(ns, "verify", "--dpagent-uid", str(AGENT_UID), "--ip-family-mode", "ipv4", "--probe-uid",
             str(APP_UID), "--timeout", "1", check=False)
    assert res.returncode == 1 and "FAIL" in res.stdout


def _wait_link_local(ns: str) -> None:
    """The kernel adds fe80::/64 once DAD ends; has_local_ipv6 needs it so that IPv6 rules get installed."""
    for _ in range(50):
        if "fe80::/64" in sh("ip", "-6", "route", ns=ns):
            return
        time.sleep(0.1)
    raise AssertionError(sh("ip", "-6", "route", ns=ns))


@pytest.mark.parametrize("installed", [True, False], ids=["installed", "not-installed"])
def test_verify_without_default_routes(installed: bool, tmp_path: Path) -> None:
    """A VM with a connected IPv4 subnet and IPv6 link-local only, no default route in either family: IPv4 is
    proven through an address of the connected subnet (and a missing ruleset still fails), IPv6 outbound cannot be
    probed and says so instead of failing."""
    with veth_pair(default_routes=False, global_v6=False) as (_, ns):
        _wait_link_local(ns)
        args = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", "nft", "--exclude-outbound-ports", "5432"]
        if installed:
            tp(ns, "install", *args, "--backup-dir", str(tmp_path))
        res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "1", check=False)
        lines = res.stdout.splitlines()
        v4_app = next(ln for ln in lines if ln.split()[1:3] == ["ipv4", "app"] and "outbound port" in ln)
        assert "10.200.0.193:80" in v4_app, res.stdout
        v6_out = [ln for ln in lines if ln.split()[1] == "ipv6" and "outside address" in ln]
        assert len(v6_out) == 3 and all(ln.startswith("SKIP") for ln in v6_out), res.stdout
        assert "cannot probe (no route for this family" in v6_out[0] and "fe80::/64 dev vB" in v6_out[0]
        if installed:
            assert res.returncode == 0 and "FAIL" not in res.stdout, res.stdout + res.stderr
            assert v4_app.startswith("PASS") and res.stdout.count("PASS") == 5, res.stdout
            assert "5 of 8 checks proven; 3 could not be probed" in res.stdout
        else:
            assert res.returncode == 1 and v4_app.startswith("FAIL"), res.stdout
            assert "although the address is routed" in v4_app


def test_verify_proves_ipv6_through_a_connected_route(tmp_path: Path) -> None:
    """A global IPv6 subnet but no default route in either family: both families are proven through an address of
    their connected subnet, so nothing is skipped; without the rules the same probes fail."""
    with veth_pair(default_routes=False, global_v6=True) as (_, ns):
        args = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", "nft", "--exclude-outbound-ports", "5432"]
        res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "1", check=False)
        v6_app = next(ln for ln in res.stdout.splitlines() if ln.split()[1:3] == ["ipv6", "app"])
        assert res.returncode == 1 and v6_app.startswith("FAIL"), res.stdout
        tp(ns, "install", *args, "--backup-dir", str(tmp_path))
        res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "1", check=False)
        assert res.returncode == 0 and "FAIL" not in res.stdout and "SKIP" not in res.stdout, res.stdout + res.stderr
        v6 = [ln for ln in res.stdout.splitlines() if ln.split()[1] == "ipv6"]
        assert len(v6) == 4 and all(ln.startswith("PASS") for ln in v6), res.stdout
        assert "original destination [fd00:200::c000:0:0:1]:80" in v6[0], v6[0]
        assert "inside the route fd00:200::/64 dev vB" in v6[0], v6[0]
        assert res.stdout.count("PASS") == 8, res.stdout


def test_verify_without_any_route_skips_outbound(tmp_path: Path) -> None:
    """Only loopback: nothing outside is reachable, so outbound is SKIP while the local inbound check still runs."""
    tag = secrets.token_hex(3)
    ns = f"dpagent-t-{tag}l"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "set", "lo", "up", ns=ns)
        args = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", "nft", "--ip-family-mode", "ipv4"]
        tp(ns, "install", *args, "--backup-dir", str(tmp_path))
        res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "1", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        labels = [ln.split()[0] for ln in res.stdout.splitlines()[:-1]]
        assert labels == ["SKIP", "SKIP", "PASS"], res.stdout
        assert "no IPv4 route" not in res.stdout and "IPv4 192.0.2.1 has no route" in res.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _rulesets(ns: str, variant: str) -> dict[str, str]:
    """Everything that shows whether a table exists: nft's own view plus both families' save output."""
    out = {"nft": sh("nft", "list", "ruleset", ns=ns)}
    for f in (4, 6):
        text = sh(f"ip{'6' if f == 6 else ''}tables-{variant}-save", ns=ns)
        out[f"ipv{f}"] = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("#"))
    return out


@pytest.mark.skipif(not shutil.which("nft"), reason="needs the nft binary to read the nf_tables ruleset")
@pytest.mark.parametrize("variant", VARIANTS)
def test_uninstall_on_a_bare_host_leaves_the_ruleset_as_before(pair: tuple[str, str], variant: str,
                                                               tmp_path: Path) -> None:
    """No iptables tables before install → none after uninstall (nft); legacy can only leave them empty and says
    so. A settings change in between (DNS off: raw no longer used) must not lose the record of created tables."""
    _, ns = pair
    before = _rulesets(ns, variant)
    assert before == {"nft": "", "ipv4": "", "ipv6": ""}, before
    base = ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", variant]
    tp(ns, "install", *base, "--redirect-all-dns-traffic", "--backup-dir", str(tmp_path / "a"))
    for f in (4, 6):
        assert '"dpagent/created-tables:raw,nat"' in sh(f"ip{'6' if f == 6 else ''}tables-{variant}-save", ns=ns)
    tp(ns, "install", *base, "--backup-dir", str(tmp_path / "b"))
    dry = tp(ns, "uninstall", "--iptables-variant", variant, "--dry-run").stdout
    assert "# IPv6: then the table(s) raw, nat that install created are " in dry, dry
    res = tp(ns, "uninstall", "--iptables-variant", variant, "--backup-dir", str(tmp_path / "c"))
    after = _rulesets(ns, variant)
    if variant == "nft":
        assert after == before, after
        assert "deleted the empty tables install had created (IPv4: raw, nat; IPv6: raw, nat)" in res.stdout
        return
    assert after["nft"] == before["nft"]
    for f in (4, 6):  # the kernel keeps legacy tables registered: exactly the empty built-in chains remain
        assert ruleset.parse(after[f"ipv{f}"]).keys() == {"raw", "nat"}, after
        assert all(ruleset.pristine(t) for t in ruleset.parse(after[f"ipv{f}"]).values()), after
        assert f"IPv{f}: iptables-legacy keeps the now empty table(s) raw, nat registered" in res.stderr
