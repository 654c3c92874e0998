"""`dpagent token generate | revoke | generate-user | revoke-user` and signing-key management."""

from __future__ import annotations

from pathlib import Path

import click

from dpagent.cli.client import api_options, make_client, url_path
from dpagent.errors import ConfigError


@click.group("token")
def token_group() -> None:
    """Issue and revoke dataplane tokens and user (API) tokens."""


def _tags(values: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in values:
        key, sep, vals = item.partition("=")
        if not sep or not key or not vals:
            raise ConfigError(f"--tag {item!r} is not key=value1[,value2...]")
        out.setdefault(key, []).extend(v for v in vals.split(",") if v)
    return out


def _keys_path(mesh: str) -> str:
    return url_path("meshes", ("mesh", mesh), "signing-keys")


@token_group.command("generate")
@click.option("--name", default="", help="dataplane name the token is bound to (empty: any)")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("--tag", "tags", multiple=True, metavar="KEY=V1[,V2]", help="allowed tag values (repeatable)")
@click.option("--valid-for", required=True, help="lifetime, e.g. 720h")
@click.option("--proxy-type", default="dataplane", type=click.Choice(["dataplane"]))
@api_options
def generate(name: str, mesh: str, tags: tuple[str, ...], valid_for: str, proxy_type: str, api_address: str,
             api_token_file: str) -> None:
    """Print a new dataplane token (copy it to the VM, e.g. /etc/dpagent/<name>/token, mode 0600)."""
    body = {"name": name, "mesh": mesh, "tags": _tags(tags), "validFor": valid_for, "type": proxy_type}
    resp = make_client(api_address, api_token_file).request("POST", "/tokens/dataplane", json=body)
    click.echo(resp.text.strip())


@token_group.command("revoke")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("--token-file", default="", help="file holding the token to revoke")
@click.option("--jti", default="", help="the token's ID (jti claim), if the token itself is gone")
@api_options
def revoke(mesh: str, token_file: str, jti: str, api_address: str, api_token_file: str) -> None:
    """Revoke a token: live ADS streams using it are closed within seconds and it is refused from then on."""
    body = {"mesh": mesh, **revocation(token_file, jti)}
    out = make_client(api_address, api_token_file).request("POST", "/tokens/dataplane/revocations", json=body).json()
    click.echo(f"revoked token {out['revoked']} in mesh {out['mesh']!r}")


def revocation(token_file: str, jti: str) -> dict[str, str]:
    """The body naming the token to revoke: its ID, or the token itself read from a file (dataplane or user)."""
    if bool(token_file) == bool(jti):
        raise ConfigError("give exactly one of --token-file or --jti")
    body = {"jti": jti}
    if token_file:
        try:
            body["token"] = Path(token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {token_file}: {e.strerror}") from None
    return body


@token_group.group("signing-key")
def signing_key_group() -> None:
    """Rotate the mesh's token signing keys (tokens name their key by serial, the JWT `kid`)."""


@signing_key_group.command("rotate")
@click.option("-m", "--mesh", default="default", show_default=True)
@api_options
def rotate_key(mesh: str, api_address: str, api_token_file: str) -> None:
    """Add a new key; tokens generated from now on use it, older tokens keep working."""
    out = make_client(api_address, api_token_file).request("POST", _keys_path(mesh)).json()
    click.echo(f"mesh {mesh!r} now signs tokens with key {out['serial']}; re-issue tokens, then delete old keys")


@signing_key_group.command("list")
@click.option("-m", "--mesh", default="default", show_default=True)
@api_options
def list_keys(mesh: str, api_address: str, api_token_file: str) -> None:
    out = make_client(api_address, api_token_file).get(_keys_path(mesh))
    click.echo(" ".join(str(s) for s in out["serials"]))


@signing_key_group.command("delete")
@click.argument("serial", type=int)
@click.option("-m", "--mesh", default="default", show_default=True)
@api_options
def delete_key(serial: int, mesh: str, api_address: str, api_token_file: str) -> None:
    """Retire key SERIAL: every token signed with it is refused from now on (live streams within seconds)."""
    make_client(api_address, api_token_file).request("DELETE", f"{_keys_path(mesh)}/{serial}")
    click.echo(f"signing key {serial} of mesh {mesh!r} deleted")


@token_group.command("generate-user")
@click.option("--name", required=True, help="the user's name (what the audit log shows)")
@click.option("--group", "groups", multiple=True, help="a group the user belongs to (repeatable); roles are bound "
                                                       "to users and groups with AccessRoleBinding")
@click.option("--valid-for", required=True, help="lifetime, e.g. 24h")
@api_options
def generate_user(name: str, groups: tuple[str, ...], valid_for: str, api_address: str, api_token_file: str) -> None:
    """Print a new user token (Kuma's `generate user-token`); the user passes it with --auth-token,
    DPAGENT_API_TOKEN or `dpagent config control-planes add --auth-token`."""
    body = {"name": name, "groups": list(groups), "validFor": valid_for}
    click.echo(make_client(api_address, api_token_file).request("POST", "/tokens/user", json=body).text.strip())


@token_group.command("revoke-user")
@click.option("--token-file", default="", help="file holding the user token to revoke")
@click.option("--jti", default="", help="the token's ID (jti claim), if the token itself is gone")
@api_options
def revoke_user(token_file: str, jti: str, api_address: str, api_token_file: str) -> None:
    """Revoke a user token: it is refused from the next request on (other replicas within a second)."""
    body = revocation(token_file, jti)
    out = make_client(api_address, api_token_file).request("POST", "/tokens/user/revocations", json=body).json()
    click.echo(f"revoked user token {out['revoked']}")


@token_group.group("user-signing-key")
def user_signing_key_group() -> None:
    """Rotate the signing keys of user tokens (global, apart from the meshes' dataplane-token keys)."""


@user_signing_key_group.command("rotate")
@api_options
def rotate_user_key(api_address: str, api_token_file: str) -> None:
    out = make_client(api_address, api_token_file).request("POST", "/user-token-signing-keys").json()
    click.echo(f"user tokens are now signed with key {out['serial']}; re-issue them, then delete the old key")


@user_signing_key_group.command("list")
@api_options
def list_user_keys(api_address: str, api_token_file: str) -> None:
    out = make_client(api_address, api_token_file).get("/user-token-signing-keys")
    click.echo(" ".join(str(s) for s in out["serials"]))


@user_signing_key_group.command("delete")
@click.argument("serial", type=int)
@api_options
def delete_user_key(serial: int, api_address: str, api_token_file: str) -> None:
    """Retire key SERIAL: every user token signed with it is refused from now on."""
    make_client(api_address, api_token_file).request("DELETE", f"/user-token-signing-keys/{serial}")
    click.echo(f"user-token signing key {serial} deleted")
