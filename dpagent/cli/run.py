"""`dpagent run` (also `kuma-dp run`) and `dpagent config show`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from dpagent.agent.settings import AGENT_SETTINGS, build_agent_config
from dpagent.cli.options import given_flags, settings_options
from dpagent.config import display_rows, load_file, resolve


@click.command("run", context_settings={"max_content_width": 120})
@settings_options(AGENT_SETTINGS)
@click.pass_context
def run_cmd(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Bootstrap from the control plane, then run and supervise Envoy until stopped.

    The first SIGTERM/SIGINT drains (readiness 503, Envoy health check failed, wait --drain-time), the second
    stops at once, the third exits immediately.
    """
    from dpagent import log
    from dpagent.agent.app import Agent

    doc, label = load_file(config_file)
    cfg, _ = build_agent_config(given_flags(ctx, params, AGENT_SETTINGS), file_doc=doc, file_label=label or "file")
    log.setup(cfg.log_level, cfg.log_format)
    code = asyncio.run(Agent(cfg).run())
    ctx.exit(code)


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration; name the control planes the CLI talks to."""


def _add_control_planes() -> None:
    from dpagent.cli.contexts import control_planes_group

    config_group.add_command(control_planes_group)


_add_control_planes()


@config_group.command("show", context_settings={"max_content_width": 120})
@settings_options(AGENT_SETTINGS)
@click.option("--sources", is_flag=True, help="show where each value came from (flag, env, file, default)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def config_show(ctx: click.Context, config_file: str | None, sources: bool, output: str, **params: Any) -> None:
    """Print the configuration `dpagent run` would use with the same flags, env and config file."""
    doc, label = load_file(config_file)
    resolved = resolve(AGENT_SETTINGS, given_flags(ctx, params, AGENT_SETTINGS), file_doc=doc,
                       file_label=label or "file")
    rows = display_rows(AGENT_SETTINGS, resolved)
    if output == "json":
        click.echo(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], indent=2))
        return
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(48, max(len(v) for _, v, _ in rows))
    for k, v, s in rows:
        click.echo(f"{k:<{width}}  {v:<{vwidth}}  {s}" if sources else f"{k:<{width}}  {v}")
