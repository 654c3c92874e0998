"""`dpagent audit`: the control plane's audit log (`GET /audit`), newest first."""

from __future__ import annotations

import json

import click

from dpagent.cli.client import api_options, make_client


@click.command("audit")
@click.option("--user", default="", help="only entries of this user")
@click.option("--type", "kind", default="", help="only entries about this resource type")
@click.option("-m", "--mesh", default=None, help="only entries in this mesh")
@click.option("--since", default="", help="RFC 3339 time or Unix seconds")
@click.option("--until", default="", help="RFC 3339 time or Unix seconds")
@click.option("--limit", default=100, show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@api_options
def audit_cmd(user: str, kind: str, mesh: str | None, since: str, until: str, limit: int, output: str,
              api_address: str, api_token_file: str) -> None:
    """Who changed what, when, from where, and how it ended (refusals and failures included)."""
    params = {k: v for k, v in (("user", user), ("kind", kind), ("mesh", mesh), ("since", since),
                                ("until", until), ("limit", str(limit))) if v is not None and v != ""}
    items = make_client(api_address, api_token_file).get("/audit", params=params)["items"]
    if output == "json":
        click.echo(json.dumps(items, indent=2))
        return
    for e in items:
        what = "/".join(p for p in (e["mesh"], e["kind"], e["name"]) if p)
        click.echo(f"{e['time']}  {e['user']:<16} {e['source']:<15} {e['access']:<24} {e['outcome']:<7} {what}"
                   + (f"  ({e['detail']})" if e["detail"] else ""))
