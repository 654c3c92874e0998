"""`transparent-proxy` / `dpagent transparent-proxy`: install, uninstall, status, verify.

Precedence is defaults < --config FILE < flags. Exit codes: 0 ok, 1 apply/verify failure (rolled back),
2 bad input (nothing changed), 3 rollback failed (manual action needed).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from transparent_proxy import apply, ruleset, verify
from transparent_proxy.config import ConfigError, TProxyConfig, build_config, load_file
from transparent_proxy.host import HostFacts, probe
from transparent_proxy.render import Rendered, dry_run_text, render
from transparent_proxy.runner import SubprocessRunner

EXIT_APPLY, EXIT_INPUT, EXIT_ROLLBACK = 1, 2, 3
DEFAULT_BACKUP_DIR = Path("/var/lib/dpagent/transparent-proxy")


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ruleset options shared by every command (all default to None so a --config file can supply them)."""
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="YAML file whose keys are these option names (flags override it)."),
        click.option("--redirect-outbound-port", help="Port outbound TCP is redirected to. [default: 15001]"),
        click.option("--redirect-inbound-port", help="Port inbound TCP is redirected to. [default: 15006]"),
        click.option("--redirect-dns-port", help="Port of the agent's DNS proxy. [default: 15053]"),
        click.option("--dpagent-user", help="User that runs dpagent and Envoy; its traffic is never redirected. "
                     "[default: dpagent]"),
        click.option("--dpagent-uid", help="The same as a numeric UID (no user lookup)."),
        click.option("--redirect-dns/--no-redirect-dns", default=None,
                     help="Redirect UDP/53 sent to the resolv.conf nameservers to the DNS proxy."),
        click.option("--redirect-all-dns-traffic/--no-redirect-all-dns-traffic", default=None,
                     help="Redirect all UDP/53 to the DNS proxy (exclusive with --redirect-dns)."),
        click.option("--skip-dns-conntrack-zone-split/--dns-conntrack-zone-split", default=None,
                     help="Do not split DNS conntrack zones in the raw table (split by default when DNS is on)."),
        click.option("--exclude-inbound-ports", multiple=True,
                     help="Ports/ranges never redirected inbound: 80,8000-8100."),
        click.option("--exclude-outbound-ports", multiple=True, help="Ports/ranges never redirected outbound."),
        click.option("--exclude-outbound-ports-for-uids", multiple=True,
                     help="UID[-UID]:PORTS[:tcp|udp] never redirected outbound, e.g. 1001:5432 or 100-110:*. Repeat."),
        click.option("--exclude-inbound-ips", multiple=True, help="Source IPs/CIDRs (v4/v6) never redirected inbound."),
        click.option("--exclude-outbound-ips", multiple=True, help="Destination IPs/CIDRs never redirected."),
        click.option("--exclude-ssh/--no-exclude-ssh", default=None,
                     help="Keep inbound TCP/22 away from the proxy so SSH survives a bad mesh. [default: on]"),
        click.option("--ip-family-mode", type=click.Choice(["dualstack", "ipv4"]),
                     help="dualstack also installs ip6tables rules when the host has IPv6. [default: dualstack]"),
        click.option("--wait", help="Seconds to wait for the xtables lock (legacy). [default: 5]"),
        click.option("--max-retries", help="Retries when iptables is busy. [default: 4]"),
        click.option("--sleep-between-retries", help="Time between retries, e.g. 2s or 500ms. [default: 2s]"),
        click.option("--backend", type=click.Choice(["iptables-restore", "python-iptables"]),
                     help="How rules are written; python-iptables is legacy-only. [default: iptables-restore]"),
        click.option("--iptables-variant", type=click.Choice(["auto", "nft", "legacy"]),
                     help="Force iptables-nft or iptables-legacy. [default: auto]"),
        click.option("--resolv-conf", help="Where --redirect-dns reads nameservers. [default: /etc/resolv.conf]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's errors into messages and exit codes (only the CLI exits)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            _fail("invalid transparent-proxy settings; nothing was changed:\n" + str(e), EXIT_INPUT)
        except apply.ApplyError as e:
            _fail(str(e), EXIT_APPLY if e.rolled_back or e.step in ("save", "plan", "test") else EXIT_ROLLBACK)

    return wrapper


def _config(config_file: Path | None, flags: dict[str, Any]) -> TProxyConfig:
    values = {k.replace("_", "-"): (v if v != () else None) for k, v in flags.items()}
    return build_config(load_file(config_file) if config_file else {}, values)


def _setup(config_file: Path | None, flags: dict[str, Any], *, need_user: bool = True,
           ) -> tuple[TProxyConfig, HostFacts, SubprocessRunner]:
    cfg = _config(config_file, flags)
    runner = SubprocessRunner()
    # uninstall finds rules by tag, so it must work even after the agent user was deleted
    facts = probe(cfg if need_user else dataclasses.replace(cfg, dpagent_user=None, dpagent_uid=0), runner)
    for w in facts.warnings:
        click.echo(f"warning: {w}", err=True)
    return cfg, facts, runner


def _restorer(cfg: TProxyConfig) -> apply.Restorer | None:
    if cfg.backend == "python-iptables":
        from transparent_proxy.iptc_backend import IptcRestorer, load_iptc

        load_iptc()
        return IptcRestorer(wait=cfg.wait)
    return None


def _need_root(dry_run: bool) -> None:
    if not dry_run and os.geteuid() != 0:
        _fail("changing iptables needs root (or CAP_NET_ADMIN); re-run with sudo, or add --dry-run", EXIT_INPUT)


@click.group("transparent-proxy")
def cli() -> None:
    """Redirect this host's TCP (and optionally DNS) through the local Envoy with iptables."""


@cli.command()
@_options
@click.option("--dry-run", is_flag=True, help="Print the exact restore text and change nothing.")
@click.option("--backup-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_BACKUP_DIR,
              show_default=True, help="Where the pre-install ruleset is saved.")
@_guard
def install(config_file: Path | None, dry_run: bool, backup_dir: Path, **flags: Any) -> None:
    """Install (or update) the rules. Re-running with the same settings changes nothing."""
    _need_root(dry_run)
    cfg, facts, runner = _setup(config_file, flags)
    rendered = render(cfg, facts)
    if dry_run:
        _print_dry_run(cfg, facts, runner, rendered)
        return
    outcome = apply.install(cfg, facts, runner, rendered=rendered, restorer=_restorer(cfg), backup_dir=backup_dir)
    for w in outcome.warnings:
        click.echo(f"warning: {w}", err=True)
    fams = ", ".join(f"IPv{f}" for f, t in outcome.transactions.items() if t is not None)
    if fams:
        click.echo(f"transparent proxy installed ({facts.variant}, {fams}); agent uid {facts.agent_uid} "
                   f"({facts.agent_user}) is not redirected; backup in {backup_dir}")
    else:
        click.echo(f"transparent proxy already installed with these settings ({facts.variant}); nothing changed")


def _print_dry_run(cfg: TProxyConfig, facts: HostFacts, runner: SubprocessRunner, rendered: Rendered) -> None:
    for w in rendered.warnings:
        click.echo(f"warning: {w}", err=True)
    try:
        outcome = apply.install(cfg, facts, runner, rendered=rendered, dry_run=True)
        texts = outcome.transactions
        if not outcome.changed:
            click.echo("# already installed with these settings; install would change nothing")
            return
    except apply.ApplyError as e:
        click.echo(f"# cannot read the current ruleset ({e}); showing the rules without cleanup", err=True)
        texts = {4: rendered.v4, 6: rendered.v6}
    click.echo(dry_run_text(texts, facts.tools, cfg.wait), nl=False)


@cli.command()
@_options
@click.option("--dry-run", is_flag=True, help="Print the exact restore text and change nothing.")
@click.option("--backup-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_BACKUP_DIR,
              show_default=True, help="Where the pre-uninstall ruleset is saved.")
@_guard
def uninstall(config_file: Path | None, dry_run: bool, backup_dir: Path, **flags: Any) -> None:
    """Remove every dpagent chain and tagged rule; rules of other tools are left exactly as they are."""
    _need_root(dry_run)
    cfg, facts, runner = _setup(config_file, flags, need_user=False)
    outcome = apply.uninstall(cfg, facts, runner, restorer=_restorer(cfg), backup_dir=backup_dir, dry_run=dry_run)
    if dry_run:
        click.echo(dry_run_text(outcome.transactions, facts.tools, cfg.wait) if outcome.changed
                   else "# no dpagent rules installed; uninstall would change nothing\n", nl=False)
        for fam, tables in outcome.created_tables.items():
            if tables and outcome.transactions.get(fam):
                then = ("deleted with a flushing restore" if facts.variant == "nft"
                        else "left empty (iptables-legacy cannot unregister a table)")
                click.echo(f"# IPv{fam}: then the table(s) {', '.join(tables)} that install created are {then}, "
                           "if nothing else uses them")
    elif outcome.changed:
        for w in outcome.warnings:
            click.echo(f"warning: {w}", err=True)
        dropped = "; ".join(f"IPv{f}: {', '.join(t)}" for f, t in outcome.removed_tables.items() if t)
        click.echo(f"transparent proxy removed ({facts.variant})"
                   + (f"; deleted the empty tables install had created ({dropped})" if dropped else ""))
    else:
        click.echo("no dpagent rules were installed; nothing changed")


@cli.command()
@_options
@_guard
def status(config_file: Path | None, **flags: Any) -> None:
    """Show what is installed per family and whether it matches the given settings."""
    cfg = _config(config_file, flags)
    runner = SubprocessRunner()
    try:
        facts = probe(cfg, runner)
        wanted: Rendered | None = render(cfg, facts)
    except ConfigError as e:  # e.g. the agent user does not exist: still show what is installed
        click.echo(f"note: cannot compare with settings ({e.problems[0]})", err=True)
        facts = probe(dataclasses.replace(cfg, dpagent_user=None, dpagent_uid=0, redirect_dns=False), runner)
        wanted = None
    click.echo(f"iptables variant: {facts.variant}")
    for fam in (4, 6):
        if not facts.tools.save(fam):
            continue
        st = ruleset.status(apply.save(runner, facts.tools, fam))
        text = wanted.family(fam) if wanted else None
        want = ruleset.installed_digest(ruleset.parse(text)) if text else None
        match = "unknown" if wanted is None else ("yes" if st.digest == want else "no")
        click.echo(f"IPv{fam}: {'installed' if st.chains else 'not installed'}; {st.rules} rules; chains: "
                   f"{', '.join(st.chains) or '-'}; matches settings: {match}")


@cli.command("verify")
@_options
@click.option("--probe-uid", type=int, default=65534, show_default=True, help="UID that plays the application.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds per check.")
@_guard
def verify_cmd(config_file: Path | None, probe_uid: int, timeout: float, **flags: Any) -> None:
    """Prove redirection with real connections (root; run while dpagent is stopped so the ports are free).

    Outbound checks connect to 192.0.2.1 / 2001:db8::1, or, without a default route, to an address inside
    another route (e.g. the connected subnet). A family with no usable route is reported as SKIP with the
    reason: a connection that has no route never reaches iptables, so it can prove nothing. Exit 1 only on FAIL.
    """
    _need_root(False)
    cfg, facts, _ = _setup(config_file, flags)
    checks = verify.run_checks(cfg, facts, probe_uid=probe_uid, timeout=timeout)
    for c in checks:
        click.echo(f"{c.label}  {c.name}: {c.detail}")
    failed = sum(c.ok is False for c in checks)
    skipped = sum(c.ok is None for c in checks)
    if failed:
        _fail("transparent proxy verification failed (see FAIL lines); is it installed? try `status`", EXIT_APPLY)
    proven = len(checks) - skipped
    click.echo(f"{proven} of {len(checks)} checks proven" + (f"; {skipped} could not be probed on this host (SKIP "
               "lines say why; they are not failures)" if skipped else ""))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
