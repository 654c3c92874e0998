"""`dpagent cp run`: the bundled zone control plane."""

from __future__ import annotations

import asyncio
from typing import Any

import click

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
    """Run the control plane: DP server (5678), ADS (5679), REST API (127.0.0.1:5681), SQLite store."""
    from dpagent import log
    from dpagent.controlplane.app import ControlPlane
    from dpagent.controlplane.settings import build_cp_config

    doc, label = load_file(config_file)
    cfg = build_cp_config(given_flags(ctx, params, CP_SETTINGS), file_doc=doc, file_label=label or "file")
    log.setup(cfg.log_level, cfg.log_format)
    ctx.exit(asyncio.run(ControlPlane(cfg).run()))
