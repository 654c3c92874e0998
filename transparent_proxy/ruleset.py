"""Pure: read `iptables-save` output and build the one `--noflush` transaction that moves it to the wanted state.

Install and uninstall are the same operation (uninstall wants nothing): flush our existing chains, delete our
tagged rules from other chains, delete our chains that are no longer wanted, append the new rules — all in one
restore per family, so traffic never runs unproxied mid-reinstall and foreign rules are never rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from transparent_proxy.render import CHAIN_PREFIX, STATE, STATE_PURPOSE, TAG

TABLE_ORDER = ("raw", "mangle", "nat", "filter", "security")
_TAGGED = re.compile(r'--comment "?' + re.escape(TAG))
_STATE = re.compile(r'--comment "?' + re.escape(TAG + STATE_PURPOSE) + r'([0-9a-f]+)')
_JUMP_OURS = re.compile(r"(?:^|\s)-[jg] " + CHAIN_PREFIX + r"\S*")
CREATED_PURPOSE = "created-tables:"
_CREATED = re.compile(r'--comment "?' + re.escape(TAG + CREATED_PURPOSE) + r'([a-z,]*)')
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


class ForeignReferenceError(RuntimeError):
    """A rule dpagent did not write jumps into a DPAGENT_ chain, so our chains cannot be deleted safely."""


@dataclass
class Table:
    name: str
    chains: dict[str, str] = field(default_factory=dict)  # name → policy ("-" for user chains)
    rules: list[str] = field(default_factory=list)  # "-A CHAIN ..." lines in order

    def ours(self) -> list[str]:
        return [c for c in self.chains if c.startswith(CHAIN_PREFIX)]

    def tagged_rules(self) -> list[str]:
        return [r for r in self.rules if is_ours(r)]


def rule_chain(line: str) -> str:
    return line.split(None, 2)[1]


def is_ours(line: str) -> bool:
    """A rule is dpagent's if it sits in a DPAGENT_ chain or carries a dpagent/ comment tag."""
    return rule_chain(line).startswith(CHAIN_PREFIX) or bool(_TAGGED.search(line))


def parse(text: str) -> dict[str, Table]:
    """Tables of an iptables-save (or our own restore) text; comments and counters are dropped."""
    tables: dict[str, Table] = {}
    cur: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), Table(line[1:].strip()))
        elif cur is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            cur.chains[name] = policy
        elif line.startswith(("-A ", "-I ")):
            cur.rules.append("-A " + line[3:])
    return tables


def installed_digest(tables: dict[str, Table]) -> str | None:
    nat = tables.get("nat")
    for rule in nat.rules if nat else []:
        if rule_chain(rule) == STATE and (m := _STATE.search(rule)):
            return m.group(1)
    return None


def created_tables(tables: dict[str, Table]) -> list[str]:
    """The tables the first install had to create (recorded in the installed ruleset itself, so uninstall knows
    them whatever --backup-dir it is given)."""
    nat = tables.get("nat")
    for rule in nat.rules if nat else []:
        if rule_chain(rule) == STATE and (m := _CREATED.search(rule)):
            return [t for t in m.group(1).split(",") if t]
    return []


def with_created_tables(wanted_text: str, current_text: str) -> str:
    """`wanted_text` plus the record of the tables dpagent created: the record already installed (so a settings
    change never forgets a table) plus every wanted table that does not exist yet."""
    current, wanted = parse(current_text), parse(wanted_text)
    recorded = created_tables(current)
    created = recorded + [n for n in wanted if n not in current and n not in recorded]
    if not created:
        return wanted_text
    rule = f'-A {STATE} -m comment --comment "{TAG}{CREATED_PURPOSE}{",".join(created)}" -j RETURN'
    out: list[str] = []
    table = ""
    for line in wanted_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if line == "COMMIT" and table == "nat":
            out.append(rule)
        out.append(line)
    return "\n".join(out) + "\n"


def pristine(table: Table) -> bool:
    """Nothing in it: no rules, only built-in chains, every policy ACCEPT (what a table looks like when created)."""
    return not table.rules and all(c in BUILTIN_CHAINS and p == "ACCEPT" for c, p in table.chains.items())


def _shape(tables: dict[str, Table]) -> dict[str, tuple[tuple[str, ...], int]]:
    return {n: (tuple(sorted(t.ours())), len(t.tagged_rules())) for n, t in tables.items()
            if t.ours() or t.tagged_rules()}


def foreign_references(tables: dict[str, Table]) -> list[str]:
    return [f"{t.name}: {r}" for t in tables.values() for r in t.rules if not is_ours(r) and _JUMP_OURS.search(r)]


def transaction(current_text: str, wanted_text: str | None) -> str | None:
    """The restore text moving `current` to `wanted` (None = remove everything of ours); None if already there."""
    current = parse(current_text)
    wanted = parse(wanted_text) if wanted_text else {}
    if wanted and installed_digest(current) == installed_digest(wanted) and _shape(current) == _shape(wanted):
        return None
    if not wanted and not _shape(current):
        return None
    refs = foreign_references(current)
    if refs:
        raise ForeignReferenceError("rules not written by dpagent jump into DPAGENT_ chains, so they cannot be "
                                    "removed safely; delete these first: " + "; ".join(refs))
    names = [n for n in TABLE_ORDER if n in current or n in wanted]
    names += sorted((set(current) | set(wanted)) - set(names))
    out: list[str] = []
    for name in names:
        cur, want = current.get(name, Table(name)), wanted.get(name, Table(name))
        cur_ours = cur.ours()
        removals = [r for r in cur.tagged_rules() if not rule_chain(r).startswith(CHAIN_PREFIX)]
        if not cur_ours and not removals and not want.rules and not want.chains:
            continue
        out.append(f"*{name}")
        out += [f"-F {c}" for c in cur_ours]
        out += [f":{c} - [0:0]" for c in want.chains if c not in cur.chains]
        out += ["-D " + r[3:] for r in removals]
        out += [f"-X {c}" for c in cur_ours if c not in want.chains]
        out += want.rules
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else None


def without_ours(text: str) -> str:
    """iptables-save text with every dpagent chain and rule removed (what uninstall should leave behind)."""
    keep: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(":") and s[1:].startswith(CHAIN_PREFIX):
            continue
        if s.startswith("-A ") and is_ours(s):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


@dataclass(frozen=True)
class FamilyStatus:
    chains: tuple[str, ...]
    rules: int
    digest: str | None


def status(current_text: str) -> FamilyStatus:
    tables = parse(current_text)
    chains = tuple(f"{t.name}/{c}" for t in tables.values() for c in t.ours())
    return FamilyStatus(chains, sum(len(t.tagged_rules()) for t in tables.values()), installed_digest(tables))


def failed_line(stderr: str) -> tuple[int | None, str]:
    """(line number, reason) from iptables-restore's error output, e.g. 'line 7 failed: Chain already exists.'
    or 'invalid port/service `99999' specified ... Error occurred at line: 3'."""
    m = re.search(r"line (\d+)(?: failed)?:?\s*(.*)", stderr)
    if m:
        return int(m.group(1)), m.group(2).strip() or "rejected by the kernel (a module such as xt_owner, " \
            "xt_comment or the table may be missing)"
    m = re.search(r"Error occurred at line: (\d+)", stderr)
    if m:
        before = stderr[: m.start()].strip().splitlines()
        reason = before[-1] if before else "syntax error"
        reason = re.sub(r"^ip6?tables[\w-]*(?: v[\d.]+)?(?: \([^)]*\))?:\s*", "", reason)
        return int(m.group(1)), reason.strip()
    lines = [s for s in stderr.strip().splitlines() if s.strip()]
    return None, lines[-1] if lines else "no error output"
