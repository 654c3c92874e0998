"""Install and uninstall: save (backup) → build the transaction → `restore --test` → `--noflush` restore per family
→ check the result. If anything after the first write fails, every family touched is put back from its backup and
the error names the rule iptables rejected, so a bad flag never leaves a half-redirected host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transparent_proxy import ruleset
from transparent_proxy.config import TProxyConfig
from transparent_proxy.host import HostFacts, Tools
from transparent_proxy.render import Rendered, render, restore_argv
from transparent_proxy.runner import Result, Runner

FAMILIES = (4, 6)


class ApplyError(RuntimeError):
    """A failed install/uninstall step; `rolled_back` says whether the previous ruleset is back in place."""

    def __init__(self, message: str, *, step: str, family: int | None = None, rolled_back: bool = False,
                 line: int | None = None, rule: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.step, self.family, self.rolled_back = step, family, rolled_back
        self.line, self.rule, self.reason = line, rule, reason


class Restorer(Protocol):
    def restore(self, family: int, text: str, *, test: bool, noflush: bool) -> Result:
        """Feed `text` to the family's restore (test = parse and check only)."""
        ...


@dataclass
class CommandRestorer:
    """The default backend: `<variant>-restore` through the runner, text on stdin."""

    runner: Runner
    tools: Tools
    wait: int = 5

    def restore(self, family: int, text: str, *, test: bool, noflush: bool) -> Result:
        argv = restore_argv(self.tools, family, wait=self.wait, test=test, noflush=noflush)
        return self.runner.run(argv, input=text, timeout=max(30, self.wait + 30))


@dataclass
class Outcome:
    """What happened per family: the transaction sent (None = already in the wanted state)."""

    transactions: dict[int, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    backups: dict[int, Path] = field(default_factory=dict)
    created_tables: dict[int, list[str]] = field(default_factory=dict)  # recorded by the first install
    removed_tables: dict[int, list[str]] = field(default_factory=dict)  # uninstall: empty tables install created

    @property
    def changed(self) -> bool:
        return any(t is not None for t in self.transactions.values())


def _families(facts: HostFacts) -> list[int]:
    return [f for f in FAMILIES if facts.tools.save(f) and facts.tools.restore(f)]


def save(runner: Runner, tools: Tools, family: int) -> str:
    binary = tools.save(family)
    res = runner.run([binary or "iptables-save"], timeout=60)
    if res.returncode != 0:
        raise ApplyError(f"{binary} failed ({res.stderr.strip() or res.returncode}); nothing was changed. "
                         "Run as root (or with CAP_NET_ADMIN)", step="save", family=family)
    return res.stdout


def _transient(res: Result) -> bool:
    text = res.stderr.lower()
    return res.returncode in (4, 124) or "xtables lock" in text or "temporarily unavailable" in text


def _describe(res: Result, text: str, family: int, what: str) -> tuple[str, int | None, str | None, str]:
    line_no, reason = ruleset.failed_line(res.stderr)
    lines = text.splitlines()
    rule = lines[line_no - 1] if line_no and 0 < line_no <= len(lines) else None
    if rule == "COMMIT" and line_no:
        table = next((ln[1:] for ln in reversed(lines[: line_no - 1]) if ln.startswith("*")), "?")
        reason = (f"the kernel rejected table {table} as a whole at COMMIT; iptables-legacy does not name the rule "
                  f"(see `dmesg | tail`, e.g. a target used in the wrong table or a missing xt_* module): {reason}")
    where = f" line {line_no}: `{rule}`" if rule else ""
    return f"IPv{family} {what} rejected{where}: {reason}", line_no, rule, reason


def _backup_sections(backup: str, tables: list[str]) -> str:
    """The backup's sections for `tables`, plus an empty (flushing) section for tables the backup lacked."""
    out: list[str] = []
    present: set[str] = set()
    keep = False
    for line in backup.splitlines():
        if line.startswith("*"):
            keep = line[1:].strip() in tables
            if keep:
                present.add(line[1:].strip())
        if keep and not line.startswith("#"):
            out.append(line)
    for t in tables:
        if t not in present:
            out += [f"*{t}", "COMMIT"]
    return "\n".join(out) + "\n"


def rollback(restorer: Restorer, family: int, backup: str, txn: str) -> str | None:
    """Restore the touched tables from the backup (flushing restore); returns an error text or None."""
    tables = list(ruleset.parse(txn))
    res = restorer.restore(family, _backup_sections(backup, tables), test=False, noflush=False)
    return None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


def _restore_retrying(restorer: Restorer, family: int, text: str, cfg: TProxyConfig,
                      sleep: Callable[[float], None]) -> Result:
    res = Result(1)
    for attempt in range(cfg.max_retries + 1):
        res = restorer.restore(family, text, test=False, noflush=True)
        if res.returncode == 0 or not _transient(res) or attempt == cfg.max_retries:
            break
        sleep(cfg.sleep_between_retries)
    return res


def apply_wanted(wanted: dict[int, str | None], cfg: TProxyConfig, facts: HostFacts, runner: Runner, *,
                 restorer: Restorer | None = None, sleep: Callable[[float], None] = time.sleep,
                 backup_dir: Path | None = None, dry_run: bool = False) -> Outcome:
    """Move each family to `wanted[family]` (None = no dpagent rules). The core of install and uninstall."""
    restorer = restorer or CommandRestorer(runner, facts.tools, cfg.wait)
    outcome = Outcome()
    backups: dict[int, str] = {}
    wanted = dict(wanted)
    for family in _families(facts):
        backups[family] = save(runner, facts.tools, family)
        if wanted.get(family):
            wanted[family] = ruleset.with_created_tables(wanted[family] or "", backups[family])
        outcome.created_tables[family] = ruleset.created_tables(ruleset.parse(backups[family]))
        try:
            outcome.transactions[family] = ruleset.transaction(backups[family], wanted.get(family))
        except ruleset.ForeignReferenceError as e:
            raise ApplyError(f"IPv{family}: {e}; nothing was changed", step="plan", family=family) from e
    todo = {f: t for f, t in outcome.transactions.items() if t is not None}
    if dry_run or not todo:
        return outcome
    for family, txn in todo.items():
        res = restorer.restore(family, txn, test=True, noflush=True)
        if res.returncode != 0:
            msg, line, rule, reason = _describe(res, txn, family, "ruleset")
            raise ApplyError(f"{msg}. Nothing was changed (failed in `restore --test`)", step="test",
                             family=family, line=line, rule=rule, reason=reason)
    if backup_dir is not None:
        backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for family in todo:
            path = backup_dir / f"ipv{family}.rules.backup"
            path.write_text(backups[family])
            outcome.backups[family] = path
    attempted: list[int] = []
    for family, txn in todo.items():
        attempted.append(family)
        res = _restore_retrying(restorer, family, txn, cfg, sleep)
        if res.returncode != 0:
            msg, line, rule, reason = _describe(res, txn, family, "ruleset")
            _fail_with_rollback(msg, attempted, todo, backups, restorer, outcome, step="restore", family=family,
                                line=line, rule=rule, reason=reason)
        after = ruleset.parse(save(runner, facts.tools, family))
        want_digest = ruleset.installed_digest(ruleset.parse(wanted[family])) if wanted.get(family) else None
        if ruleset.installed_digest(after) != want_digest:
            _fail_with_rollback(f"IPv{family}: the ruleset read back after the restore is not the one written "
                                "(another tool changed iptables concurrently?)", attempted, todo, backups,
                                restorer, outcome, step="check", family=family)
        if not wanted.get(family):
            _drop_created_tables(family, outcome.created_tables[family], after, facts, runner, restorer, outcome)
    return outcome


def _drop_created_tables(family: int, created: list[str], after: dict[str, ruleset.Table], facts: HostFacts,
                         runner: Runner, restorer: Restorer, outcome: Outcome) -> None:
    """After uninstall, remove the tables the first install created if they are still empty, so the ruleset is
    what it was before. A flushing restore of an empty section deletes an nf_tables table; legacy x_tables tables
    live in the kernel until the namespace goes away (no call unregisters one), so there we can only say so."""
    empty = [t for t in created if t in after and ruleset.pristine(after[t])]
    kept = [t for t in created if t in after and t not in empty]
    if kept:
        outcome.warnings.append(f"IPv{family}: table(s) {', '.join(kept)} were created by the install but now hold "
                                "other tools' rules, so they were kept")
    if not empty:
        return
    if facts.variant == "legacy":
        outcome.warnings.append(
            f"IPv{family}: iptables-legacy keeps the now empty table(s) {', '.join(empty)} registered in the kernel "
            f"(no iptables call unregisters a table; it goes with the network namespace, or with `modprobe -r "
            f"ip{'6' if family == 6 else ''}table_<name>` where that is a module no one uses); they hold no rules "
            "and change no packet")
        return
    res = restorer.restore(family, "".join(f"*{t}\nCOMMIT\n" for t in empty), test=False, noflush=False)
    left = ruleset.parse(save(runner, facts.tools, family)) if res.returncode == 0 else after
    still = [t for t in empty if t in left]
    if still:
        why = res.stderr.strip() if res.returncode else "still listed after a flushing restore"
        outcome.warnings.append(f"IPv{family}: could not delete the empty table(s) {', '.join(still)} that install "
                                f"created ({why}); they hold no rules")
    outcome.removed_tables[family] = [t for t in empty if t not in still]


def _fail_with_rollback(msg: str, attempted: list[int], todo: dict[int, str], backups: dict[int, str],
                        restorer: Restorer, outcome: Outcome, *, step: str, family: int, line: int | None = None,
                        rule: str | None = None, reason: str | None = None) -> None:
    failures = [f"IPv{f}: {err}" for f in attempted if (err := rollback(restorer, f, backups[f], todo[f]))]
    if failures:
        where = ", ".join(str(p) for p in outcome.backups.values()) or "(no backup directory configured)"
        raise ApplyError(f"{msg}. ROLLBACK FAILED ({'; '.join(failures)}); restore by hand from {where} with "
                         "iptables-restore", step=step, family=family, line=line, rule=rule, reason=reason)
    raise ApplyError(f"{msg}. The previous ruleset was restored", step=step, family=family, rolled_back=True,
                     line=line, rule=rule, reason=reason)


def install(cfg: TProxyConfig, facts: HostFacts, runner: Runner, *, rendered: Rendered | None = None,
            restorer: Restorer | None = None, sleep: Callable[[float], None] = time.sleep,
            backup_dir: Path | None = None, dry_run: bool = False) -> Outcome:
    """Install (or update) dpagent's rules; a second install with the same config changes nothing."""
    rendered = rendered or render(cfg, facts)
    outcome = apply_wanted({4: rendered.v4, 6: rendered.v6}, cfg, facts, runner, restorer=restorer, sleep=sleep,
                           backup_dir=backup_dir, dry_run=dry_run)
    outcome.warnings[:0] = list(rendered.warnings)
    if rendered.v6 is not None and not dry_run:
        res = runner.run(["ip", "-6", "addr", "add", "::6/128", "dev", facts.loopback], timeout=10)
        already = ("exists" in res.stderr.lower() or "already assigned" in res.stderr.lower())
        if res.returncode != 0 and not already:
            outcome.warnings.append(f"could not add ::6/128 to {facts.loopback} ({res.stderr.strip()}); Envoy's "
                                    "IPv6 inbound passthrough needs it: `ip -6 addr add ::6/128 dev lo`")
    return outcome


def uninstall(cfg: TProxyConfig, facts: HostFacts, runner: Runner, *, restorer: Restorer | None = None,
              sleep: Callable[[float], None] = time.sleep, backup_dir: Path | None = None,
              dry_run: bool = False) -> Outcome:
    """Remove every dpagent chain and tagged rule, whatever config installed them; foreign rules are untouched."""
    return apply_wanted({}, cfg, facts, runner, restorer=restorer, sleep=sleep, backup_dir=backup_dir,
                        dry_run=dry_run)
