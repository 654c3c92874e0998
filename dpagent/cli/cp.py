"""`dpagent cp run`: the bundled zone control plane."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from dpagent.cli.client import api_options
from dpagent.cli.options import given_flags, settings_options
from dpagent.config import load_file
from dpagent.controlplane.settings import CP_SETTINGS


@click.group("cp")
def cp_group() -> None:
    """The bundled zone control plane."""


@cp_group.command("run", context_settings={"max_content_width": 120})
@settings_options(CP_SETTINGS)
@click.pass_context
def cp_run(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Run the control plane: DP server (5678), ADS (5679), REST API (127.0.0.1:5681), SQLite or PostgreSQL store."""
    from dpagent import log
    from dpagent.controlplane.app import ControlPlane
    from dpagent.controlplane.settings import build_cp_config

    doc, label = load_file(config_file)
    cfg = build_cp_config(given_flags(ctx, params, CP_SETTINGS), file_doc=doc, file_label=label or "file")
    log.setup(cfg.log_level, cfg.log_format)
    ctx.exit(asyncio.run(ControlPlane(cfg).run()))


@cp_group.group("migrate")
def cp_migrate() -> None:
    """Resource store schema migrations (PostgreSQL needs one before the first `cp run` and after upgrades)."""


@cp_migrate.command("up", context_settings={"max_content_width": 120})
@settings_options(CP_SETTINGS)
@click.pass_context
def cp_migrate_up(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Bring the store's schema to this dpagent's version; safe to run again, and from several hosts at once."""
    from dpagent.controlplane.settings import build_cp_config
    from dpagent.controlplane.store.backends import migrate_up

    doc, label = load_file(config_file)
    cfg = build_cp_config(given_flags(ctx, params, CP_SETTINGS), file_doc=doc, file_label=label or "file")
    done = asyncio.run(migrate_up(cfg))
    if done.before == done.after:
        click.echo(f"store {done.where} is already at schema version {done.after}; nothing to do")
    else:
        click.echo(f"store {done.where} migrated from schema version {done.before} to {done.after}")


@cp_group.command("status")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@api_options
def cp_status(output: str, api_address: str, api_token_file: str) -> None:
    """Which replica this API belongs to and which replica leads (runs deregistration and other singleton jobs)."""
    import json

    from dpagent.cli.client import make_client
    from dpagent.timefmt import human_time

    data = make_client(api_address, api_token_file).get("/status/control-plane")
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    if data["leader"]:
        leader = f"this replica (since {human_time(data['leaderSince'])})"
    else:
        leader = data.get("leaderInstance") or "none (an election is under way)"
    store = data["store"] + ("" if data.get("storeAvailable", True) else " (UNREACHABLE: changes are not applied)")
    click.echo(f"instance: {data['instanceId']}\nstore:    {store}\nleader:   {leader}")
