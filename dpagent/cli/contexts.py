"""`dpagent config control-planes add | list | switch | remove`: named control planes (API address and auth
token) kept in the user's config dir, so `get`/`apply`/`token` need neither flag on every call (kumactl's
`config control-planes`). The file holds tokens: it is written 0600 in a 0700 directory, replaced atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from dpagent.errors import ConfigError, NotFound


@dataclass(frozen=True)
class ControlPlane:
    name: str
    address: str
    token: str = ""


def config_path() -> Path:
    if os.environ.get("DPAGENT_CLI_CONFIG"):
        return Path(os.environ["DPAGENT_CLI_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dpagent" / "control-planes.yaml"


def _load() -> dict[str, Any]:
    path = config_path()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {"controlPlanes": [], "current": ""}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("controlPlanes", []), list):
        raise ConfigError(f"{path} is not a dpagent control-planes file (controlPlanes: [...], current: NAME)")
    doc.setdefault("controlPlanes", [])
    doc.setdefault("current", "")
    return doc


def _save(doc: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def current() -> ControlPlane | None:
    """The control plane chosen with `add`/`switch`, or None when there is no file."""
    doc = _load()
    for cp in doc["controlPlanes"]:
        if isinstance(cp, dict) and cp.get("name") == doc["current"]:
            return ControlPlane(str(cp["name"]), str(cp.get("address", "")), str(cp.get("authToken", "")))
    return None


@click.group("control-planes")
def control_planes_group() -> None:
    """Named control planes (address and auth token) for the CLI, stored 0600 in the user's config dir."""


@control_planes_group.command("add")
@click.option("--name", required=True)
@click.option("--address", required=True, help="the API, e.g. http://cp.example:5681")
@click.option("--auth-token", default="", help="a user token (`dpagent token generate-user`) or the admin token")
@click.option("--auth-token-file", default="", help="read the token from this file instead")
@click.option("--overwrite", is_flag=True, help="replace a control plane of the same name")
def add(name: str, address: str, auth_token: str, auth_token_file: str, overwrite: bool) -> None:
    """Add a control plane and make it the current one."""
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r} must start with http:// or https://")
    if auth_token_file:
        try:
            auth_token = Path(auth_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {auth_token_file}: {e.strerror}") from None
    doc = _load()
    others = [cp for cp in doc["controlPlanes"] if cp.get("name") != name]
    if len(others) != len(doc["controlPlanes"]) and not overwrite:
        raise ConfigError(f"a control plane named {name!r} already exists; pass --overwrite to replace it")
    entry: dict[str, Any] = {"name": name, "address": address.rstrip("/")}
    if auth_token:
        entry["authToken"] = auth_token
    doc["controlPlanes"] = [*others, entry]
    doc["current"] = name
    _save(doc)
    click.echo(f"added control plane {name!r} ({address}); it is now the current one")


@control_planes_group.command("list")
def list_cmd() -> None:
    doc = _load()
    for cp in doc["controlPlanes"]:
        mark = "*" if cp.get("name") == doc["current"] else " "
        click.echo(f"{mark} {cp.get('name')}  {cp.get('address')}  {'token' if cp.get('authToken') else 'no token'}")


@control_planes_group.command("switch")
@click.option("--name", required=True)
def switch(name: str) -> None:
    doc = _load()
    if not any(cp.get("name") == name for cp in doc["controlPlanes"]):
        raise NotFound(f"no control plane named {name!r}; see `dpagent config control-planes list`")
    doc["current"] = name
    _save(doc)
    click.echo(f"switched to control plane {name!r}")


@control_planes_group.command("remove")
@click.option("--name", required=True)
def remove(name: str) -> None:
    doc = _load()
    kept = [cp for cp in doc["controlPlanes"] if cp.get("name") != name]
    if len(kept) == len(doc["controlPlanes"]):
        raise NotFound(f"no control plane named {name!r}")
    doc["controlPlanes"] = kept
    if doc["current"] == name:
        doc["current"] = ""
    _save(doc)
    click.echo(f"removed control plane {name!r}")
