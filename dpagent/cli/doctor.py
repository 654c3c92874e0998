"""`dpagent doctor`: is this agent healthy, and if not, what exactly to do about it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

import click

from dpagent.agent.settings import AGENT_SETTINGS, build_agent_config
from dpagent.cli.options import given_flags, settings_options
from dpagent.config import load_file
from dpagent.errors import DpAgentError

EXIT_FAILED = 1


def _instance_env(name: str) -> dict[str, str]:
    """The environment systemd gives dpagent@NAME: its env file plus the unit's fixed work dir."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("KUMA_", "DPAGENT_"))}
    env["KUMA_DATAPLANE_RUNTIME_WORK_DIR"] = f"/var/lib/dpagent/{name}"
    try:
        with open(f"/etc/dpagent/{name}/env") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key and not key.startswith("#"):
                    env[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return env


@click.command("doctor", context_settings={"max_content_width": 120})
@click.option("--instance", default="", help="check the installed agent dpagent@INSTANCE (its /etc/dpagent/INSTANCE "
              "config, env file and state) instead of flags")
@click.option("--api-address", envvar="DPAGENT_API_ADDRESS", default="http://127.0.0.1:5681", show_default=True,
              help="control plane REST API, for the xDS ACK/NACK check  [env DPAGENT_API_ADDRESS]")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@settings_options(AGENT_SETTINGS)
@click.pass_context
def doctor_cmd(ctx: click.Context, instance: str, api_address: str, output: str, config_file: str | None,
               **params: Any) -> None:
    """Check the control plane (reachable, certificate trusted), the token (for which dataplane, expiry), the
    Dataplane file, Envoy (running, ready, config ACKed), the identity certificate, transparent-proxy rules, the
    DNS proxy and port clashes. Takes the same flags as `dpagent run`. Exit 0 only when every check passes.
    """
    from dpagent.doctor import FAIL, Check, Context, render_text, run_checks

    env = None
    if instance:
        config_file = config_file or f"/etc/dpagent/{instance}/config.yaml"
        env = _instance_env(instance)
    try:
        doc, label = load_file(config_file)
        cfg, _ = build_agent_config(given_flags(ctx, params, AGENT_SETTINGS), env=env, file_doc=doc,
                                    file_label=label or "file")
    except DpAgentError as e:
        checks = [Check("config", FAIL, str(e), "fix the flags, environment or config file")]
    else:
        checks = [Check("config", "ok", f"configuration resolved ({label or 'flags/env/defaults'})"),
                  *asyncio.run(run_checks(Context(cfg, api_address=api_address.rstrip("/"))))]
    failed = any(c.status == FAIL for c in checks)
    if output == "json":
        click.echo(json.dumps({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]}, indent=2))
    else:
        click.echo(render_text(checks))
    ctx.exit(EXIT_FAILED if failed else 0)
