"""`dpagent install` and `dpagent uninstall`: a VM joins the mesh as a systemd service in one command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dpagent.errors import ConfigError


def _ports(value: str, flag: str) -> tuple[int, ...]:
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise ConfigError(f"{flag}: {item!r} is not a port number")
        out.append(int(item))
    return tuple(out)


def _vars(items: tuple[str, ...]) -> dict[str, str]:
    from dpagent.config import p_vars

    try:
        return p_vars(list(items))
    except ValueError as e:
        raise ConfigError(f"--dataplane-var: {e}") from None


def _live_checks(root: str) -> None:
    if sys.platform == "win32":
        raise ConfigError("`dpagent install` sets up systemd units; on Windows use windows\\install.ps1 (it installs "
                          "a Windows service; transparent proxying is not available on Windows)")
    if root == "/" and os.geteuid() != 0:
        raise ConfigError("`dpagent install` writes /etc/dpagent and systemd units and creates the dpagent user: "
                          "run it as root (sudo), or pass --root DIR to write into a directory tree")


@click.command("install", context_settings={"max_content_width": 120})
@click.option("--cp-address", required=True, help="control plane DP server URL, e.g. https://cp.example:5678")
@click.option("--ca-cert-file", required=True, help="the control plane's CA certificate (its <data-dir>/ca.pem)")
@click.option("--token-file", required=True, help="dataplane token from `dpagent token generate`")
@click.option("-d", "--dataplane-file", required=True, help="Dataplane resource template")
@click.option("-v", "--dataplane-var", "variables", multiple=True, metavar="NAME=VALUE",
              help="template variable (repeatable)")
@click.option("--name", default="", help="instance name (default: the Dataplane's name): dpagent@NAME")
@click.option("--readiness-port", type=int, default=0, help="readiness port (give each agent on a host its own)")
@click.option("--transparent-proxy", is_flag=True, help="also install dpagent-tproxy.service (iptables rules)")
@click.option("--exclude-inbound-ports", default="", help="with --transparent-proxy: inbound ports never "
              "redirected, comma-separated (SSH, 22, always stays reachable)")
@click.option("--exclude-outbound-ports", default="", help="with --transparent-proxy: outbound ports not redirected")
@click.option("--redirect-dns", is_flag=True, help="with --transparent-proxy: send DNS to the agent's DNS proxy")
@click.option("--root", default="/", show_default=True, help="write into this directory tree instead of the "
              "live system (no user, no chown, no systemctl start)")
@click.option("--no-start", is_flag=True, help="enable the unit but do not start it now")
def install_cmd(cp_address: str, ca_cert_file: str, token_file: str, dataplane_file: str, variables: tuple[str, ...],
                name: str, readiness_port: int, transparent_proxy: bool, exclude_inbound_ports: str,
                exclude_outbound_ports: str, redirect_dns: bool, root: str, no_start: bool) -> None:
    """Install this host's agent as the systemd service dpagent@NAME and start it (returns once Envoy is ready).

    Writes /etc/dpagent/NAME/ (config.yaml, token 0600, ca.pem, dataplane.yaml), the unit files, creates the
    `dpagent` system user, then enables and starts the unit. Running it again changes nothing; changed inputs
    are written and the agent restarted.
    """
    from dpagent import install as inst

    _live_checks(root)
    tproxy = None
    if transparent_proxy:
        if sys.platform == "win32":  # pragma: no cover - _live_checks already refused
            raise ConfigError("transparent proxying is not available on Windows")
        tproxy = inst.TproxyOptions(_ports(exclude_inbound_ports, "--exclude-inbound-ports"),
                                    _ports(exclude_outbound_ports, "--exclude-outbound-ports"), redirect_dns)
    elif redirect_dns or exclude_outbound_ports or exclude_inbound_ports:
        raise ConfigError("--redirect-dns and --exclude-*-ports only apply with --transparent-proxy")
    req = inst.InstallRequest(cp_address=cp_address, ca_cert_file=ca_cert_file, token_file=token_file,
                              dataplane_file=dataplane_file, variables=_vars(variables), name=name,
                              readiness_port=readiness_port, tproxy=tproxy, root=Path(root), start=not no_start)
    bin_dir = inst.dpagent_bin_dir()
    if root == "/" and bin_dir.startswith(("/home/", "/root/")):
        raise ConfigError(f"dpagent runs from {bin_dir}, which the unit's ProtectHome=yes hides from the service; "
                          "install it outside home directories: python3 -m venv /opt/dpagent && "
                          "/opt/dpagent/bin/pip install dpagent, then run /opt/dpagent/bin/dpagent install")
    name, entries, warnings = inst.plan(req, bin_dir, inst.find_unit_templates())
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"installing dpagent@{name} into {root}")
    installer = inst.Installer(Path(root), echo=click.echo)
    changed = installer.install(name, entries, start=not no_start, tproxy=bool(tproxy))
    if not changed:
        click.echo("  nothing to change")
    unit = f"dpagent@{name}.service"
    if installer.live and not no_start:
        click.echo(f"{unit} is running and Envoy is ready. Logs: journalctl -u {unit}; checks: dpagent doctor "
                   f"--name {name}")
    elif installer.live:
        click.echo(f"{unit} is enabled; start it with `systemctl start {unit}`")


@click.command("uninstall")
@click.argument("name")
@click.option("--root", default="/", show_default=True, help="the directory tree `dpagent install --root` wrote")
def uninstall_cmd(name: str, root: str) -> None:
    """Stop dpagent@NAME (it drains first), remove its files and state; the last one also removes the units."""
    from dpagent import install as inst

    _live_checks(root)
    inst.Installer(Path(root), echo=click.echo).uninstall(name)
    click.echo(f"dpagent@{name} uninstalled")
