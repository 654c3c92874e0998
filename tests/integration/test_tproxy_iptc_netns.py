"""Real-kernel tests of the optional python-iptables backend (`--backend python-iptables`), legacy variant only.

python-iptables acts on the network namespace of the process that calls libiptc, so every step that loads `iptc`
runs in a child under `ip netns exec dpagent-iptc-<random>`; this process never imports iptc and never touches the
host's rules. The iptables-restore backend, run against the same config in a sibling namespace, is the reference:
both must leave the same `iptables-legacy-save` output, and each tool must be able to delete the other's rules
(libiptc and iptables-restore --test both compare the binary entries, masks and flags included, which
`iptables-save` does not print).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tproxy_probe import inbound_probe

pytestmark = [pytest.mark.root, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
AGENT_UID, APP_UID = 5678, 4321
FAMILIES = (4, 6)
CHAINS = ("DPAGENT_INBOUND", "DPAGENT_INBOUND_REDIRECT", "DPAGENT_OUTBOUND", "DPAGENT_OUTBOUND_REDIRECT",
          "DPAGENT_STATE")
CONFIGS = {
    "default": [],
    "rich": ["--redirect-all-dns-traffic", "--exclude-outbound-ips", "10.0.0.0/8,fd00::/8",
             "--exclude-inbound-ips", "192.0.2.0/24,2001:db8::/32", "--exclude-inbound-ports", "8081,9000-9100,9200",
             "--exclude-outbound-ports", "5432", "--exclude-outbound-ports-for-uids", "100-110:53,3000-5000:udp",
             "--exclude-outbound-ports-for-uids", "0:*:tcp"],
}


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and run iptables-legacy"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is unavailable (install iproute2)"
    if not (shutil.which("iptables-legacy-save") and shutil.which("iptables-legacy-restore")
            and shutil.which("ip6tables-legacy-save")):
        return "iptables-legacy(-save/-restore) / ip6tables-legacy-save missing (apt-get install iptables)"
    if importlib.util.find_spec("iptc") is None:  # find_spec only: importing iptc would modprobe on the host
        return "python-iptables (import name iptc) is not installed: pip install 'dpagent[iptc]'"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def run(argv: list[str], ns: str | None = None, *, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    res = subprocess.run(full, capture_output=True, text=True, input=input, timeout=90, cwd=REPO,
                         env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"{full} exit {res.returncode}: {res.stdout}{res.stderr}")
    return res


def tp(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "transparent_proxy.cli", *args], ns, check=check)


def save(ns: str, family: int) -> str:
    return run([f"ip{'6' if family == 6 else ''}tables-legacy-save"], ns).stdout


def strip(text: str) -> list[str]:
    """Save output without '#' lines and without chain counters: what must be byte-identical."""
    return [ln.split(" [")[0] if ln.startswith(":") else ln for ln in text.splitlines() if not ln.startswith("#")]


def normalise(text: str) -> str:
    """`strip`, minus tables that hold nothing: which empty tables the kernel has instantiated depends on which
    tool touched them first, not on the ruleset."""
    tables, cur = [], []
    for line in strip(text):
        cur.append(line)
        if line == "COMMIT":
            body = cur[1:-1]
            if any(x.startswith("-A") or not x.endswith("ACCEPT") for x in body):
                tables.append("\n".join(cur))
            cur = []
    return "\n".join(tables) + "\n"


def ours(text: str) -> dict[str, list[str]]:
    """dpagent's rules per table, as `-A CHAIN spec` lines in save order."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and ("DPAGENT_" in line.split()[1] or "dpagent/" in line):
            out.setdefault(table, []).append(line)
    return out


def deletion_text(rules: dict[str, list[str]]) -> str:
    """Restore text deleting every given rule (dpagent chains emptied bottom-up, so order never matters)."""
    return "".join(f"*{t}\n" + "".join("-D" + r[2:] + "\n" for r in reversed(rs)) + "COMMIT\n"
                   for t, rs in rules.items())


@pytest.fixture
def make_vm() -> Iterator[Callable[[], tuple[str, str]]]:
    """Factory: a fresh (peer, vm) namespace pair joined by veth (10.200.0.1 ↔ .2, fd00:200::1 ↔ ::2); the VM
    routes everything to the peer, so both families are configured. Every namespace is deleted afterwards."""
    created: list[str] = []

    def make() -> tuple[str, str]:
        tag = secrets.token_hex(4)
        peer, vm = f"dpagent-iptc-{tag}p", f"dpagent-iptc-{tag}v"
        for ns in (peer, vm):
            run(["ip", "netns", "add", ns])
            created.append(ns)
        run(["ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB"], peer)
        run(["ip", "link", "set", "vB", "netns", vm], peer)
        for ns, dev, v4, v6 in ((peer, "vA", "10.200.0.1/24", "fd00:200::1/64"),
                                (vm, "vB", "10.200.0.2/24", "fd00:200::2/64")):
            run(["ip", "link", "set", "lo", "up"], ns)
            run(["ip", "addr", "add", v4, "dev", dev], ns)
            run(["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"], ns)
            run(["ip", "link", "set", dev, "up"], ns)
        run(["ip", "route", "add", "default", "via", "10.200.0.1"], vm)
        run(["ip", "-6", "route", "add", "default", "via", "fd00:200::1"], vm)
        return peer, vm

    try:
        yield make
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def iptc_loads(make_vm: Callable[[], tuple[str, str]]) -> None:
    """Skip (with python-iptables' own error) when iptc is installed but cannot load libiptc/libxtables."""
    _, ns = make_vm()
    res = run([sys.executable, "-c", "import iptc; iptc.Rule6().create_target('REDIRECT')"], ns, check=False)
    if res.returncode != 0:
        pytest.skip(f"python-iptables cannot load libip4tc/libip6tc/libxtables: {res.stderr.strip()[-300:]} "
                    "(install Debian's iptables package, or set XTABLES_LIBDIR)")


FOREIGN_RULES = [
    ("-t", "nat", "-N", "FOREIGN"), ("-t", "nat", "-A", "FOREIGN", "-p", "tcp", "--dport", "53", "-j", "RETURN"),
    ("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "FOREIGN"),
    ("-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5000", "-m", "comment", "--comment",
     "someone's rule", "-j", "RETURN"),
    ("-t", "nat", "-A", "OUTPUT", "-o", "eth0", "-p", "tcp", "-j", "RETURN"),
    ("-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT"),
    ("-t", "filter", "-A", "INPUT", "-s", "192.0.2.0/24", "-j", "DROP"),
]


def add_foreign(ns: str) -> None:
    for rule in FOREIGN_RULES:
        run(["iptables-legacy", *rule], ns)
        run(["ip6tables-legacy", *[x.replace("192.0.2.0/24", "2001:db8::/32") for x in rule]], ns)


def install_args(config: str, backend: str) -> list[str]:
    return ["--dpagent-uid", str(AGENT_UID), "--iptables-variant", "legacy", "--backend", backend, *CONFIGS[config]]


@pytest.mark.usefixtures("iptc_loads")
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_iptc_matches_restore_idempotent_and_uninstall_keeps_foreign(
        make_vm: Callable[[], tuple[str, str]], config: str, tmp_path: Path) -> None:
    _, ns = make_vm()  # python-iptables backend
    _, ref = make_vm()  # default iptables-restore backend, same config
    for n in (ns, ref):
        add_foreign(n)
    before = {f: save(ns, f) for f in FAMILIES}
    args = install_args(config, "python-iptables")
    res = tp(ns, "install", *args, "--backup-dir", str(tmp_path / "iptc"))
    assert "installed (legacy, IPv4, IPv6)" in res.stdout, res.stdout + res.stderr
    tp(ref, "install", *install_args(config, "iptables-restore"), "--backup-dir", str(tmp_path / "ref"))
    first = {f: save(ns, f) for f in FAMILIES}
    for f in FAMILIES:
        for chain in CHAINS + (("DPAGENT_DNS",) if config == "rich" else ()):
            assert f":{chain} - " in first[f], (f, chain)
        for purpose in ("inbound-capture", "outbound-capture", "agent-return", "outbound-to-port-15001"):
            assert f'--comment "dpagent/{purpose}"' in first[f], (f, purpose)
        assert normalise(first[f]) == normalise(save(ref, f)), f"IPv{f}: python-iptables and iptables-restore differ"

    # binary equivalence, both ways: iptables-restore can delete what libiptc wrote, and vice versa
    for f in FAMILIES:
        restore = f"ip{'6' if f == 6 else ''}tables-legacy-restore"
        run([restore, "--test", "--noflush"], ns, input=deletion_text(ours(first[f])))
        run([sys.executable, "-m", "transparent_proxy.iptc_backend", str(f), "--test"], ref,
            input=deletion_text(ours(save(ref, f))))

    res = tp(ns, "install", *args, "--backup-dir", str(tmp_path / "iptc"))
    assert "nothing changed" in res.stdout, res.stdout
    for f in FAMILIES:
        assert strip(save(ns, f)) == strip(first[f])
    assert "matches settings: yes" in tp(ns, "status", *args).stdout

    tp(ns, "uninstall", "--iptables-variant", "legacy", "--backend", "python-iptables", "--backup-dir",
       str(tmp_path / "iptc"))
    for f in FAMILIES:
        after = save(ns, f)
        assert "DPAGENT" not in after and "dpagent/" not in after, after
        # normalise only drops empty tables: python-iptables opens (so the kernel instantiates) every table
        assert normalise(after) == normalise(before[f]), f"IPv{f}: uninstall changed foreign rules"
    res = tp(ns, "uninstall", "--iptables-variant", "legacy", "--backend", "python-iptables")
    assert "nothing changed" in res.stdout, res.stdout




@pytest.mark.usefixtures("iptc_loads")
def test_iptc_redirection_really_happens(make_vm: Callable[[], tuple[str, str]], tmp_path: Path) -> None:
    peer, ns = make_vm()
    args = install_args("default", "python-iptables")
    tp(ns, "install", *args, "--backup-dir", str(tmp_path))
    # outbound (app UID → 15001 with SO_ORIGINAL_DST; agent UID untouched) and agent → local → 15006, both families
    res = tp(ns, "verify", *args, "--probe-uid", str(APP_UID), "--timeout", "2", check=False)
    assert res.returncode == 0 and res.stdout.count("PASS") == 6 and "ipv6" in res.stdout, res.stdout + res.stderr
    # inbound from the peer: an app port lands on 15006 with the original destination; SSH (22) is not redirected
    seen = inbound_probe(ns, peer)
    assert [15006, "10.200.0.2:8080"] in seen, seen
    # SSH reached port 22 itself (conntrack may still report the unchanged original destination)
    assert any(p == 22 and o in (None, "10.200.0.2:22") for p, o in seen), seen
    assert not any(p == 15006 and o and o.endswith(":22") for p, o in seen), seen
    tp(ns, "uninstall", "--iptables-variant", "legacy", "--backend", "python-iptables")
    assert "DPAGENT" not in save(ns, 4) + save(ns, 6)


ROLLBACK = """
import sys
from dataclasses import replace
from transparent_proxy.apply import ApplyError, install
from transparent_proxy.config import build_config
from transparent_proxy.host import HostFacts, tools_for
from transparent_proxy.iptc_backend import IptcRestorer
from transparent_proxy.render import render
from transparent_proxy.runner import SubprocessRunner

runner = SubprocessRunner()
facts = HostFacts(agent_uid=5678, tools=tools_for(runner, "legacy"), ipv6=True)
if sys.argv[1] == "good":
    install(build_config({}, {"backend": "python-iptables"}), facts, runner, restorer=IptcRestorer(),
            sleep=lambda s: None)
    sys.exit(0)
cfg = build_config({}, {"backend": "python-iptables", "exclude-outbound-ports": "5432"})
rendered = render(cfg, facts)
bad = '-A DPAGENT_OUTBOUND -p udp -m comment --comment "dpagent/bad" -j CT --zone 1'  # CT is raw-only
rendered = replace(rendered, v6=rendered.v6.replace("-A DPAGENT_STATE", bad + "\\n-A DPAGENT_STATE"))
try:
    install(cfg, facts, runner, rendered=rendered, restorer=IptcRestorer(), sleep=lambda s: None)
except ApplyError as e:
    print(f"ERROR step={e.step} family={e.family} rolled_back={e.rolled_back} rule={e.rule!r}: {e}")
    sys.exit(0)
sys.exit("the bad ruleset was accepted")
"""


@pytest.mark.usefixtures("iptc_loads")
def test_iptc_commit_failure_rolls_back_both_families(make_vm: Callable[[], tuple[str, str]]) -> None:
    """IPv4 commits, IPv6 is rejected by the kernel at COMMIT: both families are put back from the backups by the
    python-iptables backend's flushing restore, foreign rules (a comment with a quote included) byte-identical."""
    _, ns = make_vm()
    add_foreign(ns)
    run([sys.executable, "-c", ROLLBACK, "good"], ns)
    before = {f: save(ns, f) for f in FAMILIES}
    res = run([sys.executable, "-c", ROLLBACK, "bad"], ns)
    assert "ERROR step=restore family=6 rolled_back=True rule='COMMIT'" in res.stdout, res.stdout + res.stderr
    assert "table nat" in res.stdout, res.stdout
    for f in FAMILIES:
        after = save(ns, f)
        assert normalise(after) == normalise(before[f]), f"IPv{f} not rolled back"
        assert '--comment "someone\\\'s rule"' in after, after  # iptables-save's escaping, unchanged
    assert "matches settings: yes" in tp(ns, "status", *install_args("default", "python-iptables")).stdout


def test_iptc_backend_refuses_nft(make_vm: Callable[[], tuple[str, str]]) -> None:
    """libiptc cannot see nf_tables: asking for both must fail before anything is written, naming the fix."""
    _, ns = make_vm()
    res = tp(ns, "install", "--dpagent-uid", str(AGENT_UID), "--backend", "python-iptables", "--iptables-variant",
             "nft", check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "legacy" in res.stderr and "--backend iptables-restore" in res.stderr, res.stderr
    assert "DPAGENT" not in save(ns, 4) + run(["iptables-nft-save"], ns, check=False).stdout


@pytest.mark.usefixtures("iptc_loads")
def test_iptc_waits_for_the_xtables_lock(make_vm: Callable[[], tuple[str, str]], tmp_path: Path) -> None:
    """libiptc takes no lock itself; the backend holds the one `iptables -w` uses and reports a busy lock as exit 4
    (which apply retries). XTABLES_LOCKFILE keeps the test off the host's /run/xtables.lock."""
    _, ns = make_vm()
    lock = tmp_path / "xtables.lock"
    text = "*nat\n:DPAGENT_LOCKTEST - [0:0]\nCOMMIT\n"
    worker = [sys.executable, "-m", "transparent_proxy.iptc_backend", "4", "--wait=0.3"]
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = run(worker, ns, check=False, input=text, env={"XTABLES_LOCKFILE": str(lock)})
    assert res.returncode == 4 and "xtables lock" in res.stderr, res.stderr
    assert "DPAGENT_LOCKTEST" not in save(ns, 4)
    run(worker, ns, input=text, env={"XTABLES_LOCKFILE": str(lock)})
    assert ":DPAGENT_LOCKTEST - " in save(ns, 4)
