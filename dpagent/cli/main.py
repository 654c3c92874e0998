"""The `dpagent` / `kuma-dp` entry point. Subcommands import their heavy modules lazily to keep start-up fast."""

from __future__ import annotations

import sys

import click

from dpagent import __version__
from dpagent.errors import EXIT_CODES, EXIT_INTERNAL, DpAgentError

# Subcommands load on first use: `dpagent run` must not pay for the control plane's or iptables' imports.
LAZY: dict[str, str] = {
    "run": "dpagent.cli.run:run_cmd",
    "config": "dpagent.cli.run:config_group",
    "cp": "dpagent.cli.cp:cp_group",
    "apply": "dpagent.cli.resources:apply_cmd",
    "get": "dpagent.cli.resources:get_cmd",
    "delete": "dpagent.cli.resources:delete_cmd",
    "inspect": "dpagent.cli.resources:inspect_cmd",
    "token": "dpagent.cli.token:token_group",
    "audit": "dpagent.cli.audit:audit_cmd",
    "transparent-proxy": "transparent_proxy.cli:cli",
    "install": "dpagent.cli.install:install_cmd",
    "uninstall": "dpagent.cli.install:uninstall_cmd",
    "doctor": "dpagent.cli.doctor:doctor_cmd",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY and cmd_name not in self.commands:
            import importlib

            module, _, attr = LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name=cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DpAgentError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)


def _exit_codes_epilog() -> str:
    return "Exit codes:\n\n" + "\n\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


@click.group(cls=_Group, epilog=_exit_codes_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dpagent")
def cli() -> None:
    """dpagent: a service-mesh data plane agent for VMs and bare metal, with a bundled zone control plane."""


@cli.command("version")
@click.option("--binary-path", default="", envvar="KUMA_DATAPLANE_RUNTIME_BINARY_PATH", help="Envoy binary")
def version_cmd(binary_path: str) -> None:
    """Print the agent's and Envoy's versions."""
    import asyncio

    from dpagent.agent.envoy import envoy_version, find_envoy

    click.echo(f"dpagent: {__version__}")
    binary = find_envoy(binary_path)
    v = asyncio.run(envoy_version(binary))
    click.echo(f"envoy:   {v.version} ({v.build}) at {binary}")


@cli.command("demo")
@click.option("--base-port", default=20000, show_default=True, help="first of the demo's service ports")
@click.option("--seconds", default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
@click.option("--api-port", default=5681, show_default=True, help="the demo control plane's REST API port")
@click.option("--dp-server-port", default=5678, show_default=True, help="the demo control plane's DP server port")
@click.option("--xds-port", default=5679, show_default=True, help="the demo control plane's ADS port")
def demo_cmd(base_port: int, seconds: float, api_port: int, dp_server_port: int, xds_port: int) -> None:
    """Run a local control plane with two demo services and their agents (mTLS, real Envoys)."""
    from dpagent.demo import run_demo

    sys.exit(run_demo(base_port=base_port, api_port=api_port, dp_port=dp_server_port, xds_port=xds_port,
                      seconds=seconds))


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except DpAgentError as e:  # errors raised outside invoke (e.g. while parsing)
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # pragma: no cover - last resort, keeps the exit code documented
        import traceback

        traceback.print_exc()  # an internal error is a bug: the report needs the traceback
        click.echo(f"Error: internal error: {e!r}", err=True)
        sys.exit(EXIT_INTERNAL)
