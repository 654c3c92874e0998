"""Probe the host for the facts the renderer needs: iptables variant, loopback name, nameservers, IPv6, agent UID.

Everything here reads the system (files, `--version` output, `*-save`) and nothing writes, so `status`,
`--dry-run` and `verify` can call it freely. Variant detection follows Kuma's rules (reference §1.9) because
picking the wrong variant makes rules invisible to `iptables -L` or silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transparent_proxy.config import DEFAULT_USER, ConfigError, TProxyConfig
from transparent_proxy.runner import Runner

Variant = Literal["nft", "legacy"]
SEARCH_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_VERSION_RE = re.compile(r"^ip6?tables[\w-]*? v(\d+(?:\.\d+)+)(?: \((.*?)\))?", re.MULTILINE)
IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class Tools:
    """The save/restore binaries of one variant; v6 is None when ip6tables of that variant is missing."""

    variant: Variant
    save4: str
    restore4: str
    save6: str | None = None
    restore6: str | None = None

    def save(self, family: int) -> str | None:
        return self.save4 if family == 4 else self.save6

    def restore(self, family: int) -> str | None:
        return self.restore4 if family == 4 else self.restore6


@dataclass(frozen=True)
class HostFacts:
    """Everything about the host that changes the rendered rules (the renderer never looks anywhere else)."""

    agent_uid: int
    agent_user: str = DEFAULT_USER
    loopback: str = "lo"
    nameservers: tuple[str, ...] = ()
    ipv6: bool = False
    tools: Tools = field(default_factory=lambda: Tools("nft", "iptables-nft-save", "iptables-nft-restore",
                                                        "ip6tables-nft-save", "ip6tables-nft-restore"))
    warnings: tuple[str, ...] = ()

    @property
    def variant(self) -> Variant:
        return self.tools.variant


def resolve_agent_uid(cfg: TProxyConfig) -> tuple[int, str]:
    """Numeric UIDs are used as given (no NSS lookup needed); names must exist, else say how to create one."""
    if cfg.dpagent_uid is not None:
        return cfg.dpagent_uid, _name_of(cfg.dpagent_uid)
    user = cfg.dpagent_user or DEFAULT_USER
    if user.isdigit():
        return int(user), _name_of(int(user))
    try:
        return pwd.getpwnam(user).pw_uid, user
    except KeyError:
        hint = ("create it with `useradd --system --no-create-home --shell /usr/sbin/nologin dpagent`"
                if user == DEFAULT_USER else "check the spelling")
        raise ConfigError([f"--dpagent-user: user {user!r} does not exist; {hint}, or pass --dpagent-user "
                           "NAME / --dpagent-uid N for the user that runs dpagent and Envoy"]) from None


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def loopback_name(sys_class_net: Path = Path("/sys/class/net")) -> str:
    """The interface flagged IFF_LOOPBACK (almost always `lo`)."""
    try:
        for dev in sorted(sys_class_net.iterdir()):
            try:
                if int((dev / "flags").read_text().strip(), 16) & IFF_LOOPBACK:
                    return dev.name
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return "lo"


def parse_resolv_conf(text: str) -> tuple[str, ...]:
    """Nameserver addresses in file order; scoped link-local servers (fe80::1%eth0) lose the scope."""
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            addr = fields[1].split("%", 1)[0]
            try:
                out.append(str(ipaddress.ip_address(addr)))
            except ValueError:
                continue
    return tuple(dict.fromkeys(out))


def has_local_ipv6(if_inet6: Path = Path("/proc/net/if_inet6")) -> bool:
    """True when some interface other than loopback has an IPv6 address (Kuma's test for enabling ip6tables)."""
    try:
        lines = if_inet6.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[0] != "0" * 31 + "1":
            return True
    return False


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SEARCH_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _mode(runner: Runner, binary: str) -> Variant | None:
    res = runner.run([binary, "--version"], timeout=10)
    m = _VERSION_RE.search(res.stdout + res.stderr)
    if res.returncode != 0 and not m:
        return "legacy" if "unrecognized option" in res.stderr else None  # very old iptables
    if not m:
        return None
    return "nft" if (m.group(2) or "") == "nf_tables" else "legacy"


def tools_for(runner: Runner, variant: Variant) -> Tools | None:
    """The variant's binaries if all of them exist and report that variant (mixed sets are unusable)."""
    found: dict[str, str] = {}
    for fam in ("", "6"):
        for suffix in ("save", "restore"):
            binary = None
            for name in (f"ip{fam}tables-{variant}-{suffix}", f"ip{fam}tables-{suffix}"):
                path = _find(name)
                if path and _mode(runner, path) == variant:
                    binary = path
                    break
            if binary:
                found[f"{suffix}{fam or '4'}"] = binary
    if "save4" not in found or "restore4" not in found:
        return None
    has6 = "save6" in found and "restore6" in found
    return Tools(variant, found["save4"], found["restore4"], found.get("save6") if has6 else None,
                 found.get("restore6") if has6 else None)


def _rule_count(runner: Runner, tools: Tools) -> tuple[int, bool]:
    """(rules present, dpagent rules present) from a plain `*-save`, which never loads new tables."""
    res = runner.run([tools.save4], timeout=30)
    if res.returncode != 0:
        return 0, False
    rules = [line for line in res.stdout.splitlines() if line.startswith("-A ")]
    return len(rules), any("DPAGENT_" in line or "dpagent/" in line for line in rules)


def detect_tools(runner: Runner, wanted: Literal["auto", "nft", "legacy"] = "auto") -> tuple[Tools, list[str]]:
    """Pick nft or legacy: the one already holding dpagent rules, else the only one with rules, else nft."""
    warnings: list[str] = []
    candidates = {v: tools_for(runner, v) for v in (("nft", "legacy") if wanted == "auto" else (wanted,))}
    usable = {v: t for v, t in candidates.items() if t is not None}
    if not usable:
        which = "iptables" if wanted == "auto" else f"iptables-{wanted}"
        raise ConfigError([f"no usable {which} binaries found (need *-save and *-restore of one variant); "
                           "install the `iptables` package (apt-get install iptables / dnf install iptables-nft)"])
    if len(usable) == 1:
        return next(iter(usable.values())), warnings
    counts = {v: _rule_count(runner, t) for v, t in usable.items()}
    ours = [v for v, (_, mine) in counts.items() if mine]
    with_rules = [v for v, (n, _) in counts.items() if n > 0]
    if len(ours) == 1:
        choice: Variant = ours[0]  # type: ignore[assignment]
    elif with_rules == ["legacy"]:
        choice = "legacy"
    else:
        choice = "nft"
        if len(with_rules) == 2:
            warnings.append("both iptables-nft and iptables-legacy hold rules; using nft (pass --iptables-variant "
                            "legacy to override)")
    return usable[choice], warnings


def probe(cfg: TProxyConfig, runner: Runner) -> HostFacts:
    """Gather HostFacts for `cfg`; raises ConfigError for facts the user must fix (unknown user, no iptables)."""
    problems: list[str] = []
    uid, user = 0, DEFAULT_USER
    try:
        uid, user = resolve_agent_uid(cfg)
    except ConfigError as e:
        problems.extend(e.problems)
    try:
        tools, warnings = detect_tools(runner, cfg.iptables_variant)
    except ConfigError as e:
        raise ConfigError(problems + e.problems) from None
    if problems:
        raise ConfigError(problems)
    if cfg.backend == "python-iptables" and tools.variant != "legacy":
        raise ConfigError(["--backend python-iptables needs the legacy iptables variant but this host uses "
                           "nf_tables; use --backend iptables-restore (the default)"])
    nameservers: tuple[str, ...] = ()
    if cfg.redirect_dns:
        try:
            nameservers = parse_resolv_conf(cfg.resolv_conf.read_text())
        except OSError as e:
            raise ConfigError([f"--redirect-dns: cannot read {cfg.resolv_conf} ({e.strerror}); fix it, or use "
                               "--redirect-all-dns-traffic which needs no nameserver list"]) from e
    ipv6 = cfg.ip_family_mode == "dualstack" and has_local_ipv6()
    if ipv6 and tools.save6 is None:
        warnings.append(f"IPv6 is configured on this host but ip6tables-{tools.variant} is missing; IPv6 traffic "
                        "will NOT be redirected")
        ipv6 = False
    return HostFacts(agent_uid=uid, agent_user=user, loopback=loopback_name(), nameservers=nameservers, ipv6=ipv6,
                     tools=tools, warnings=tuple(warnings))
