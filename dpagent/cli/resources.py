"""`dpagent apply | get | delete | inspect` — the kumactl-like resource commands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from dpagent import safe_yaml
from dpagent.cli.client import ApiClient, api_options, make_client, url_path
from dpagent.controlplane.kinds import KINDS, Kind, by_type, kind_of
from dpagent.errors import ConfigError, DpAgentError, ValidationError
from dpagent.model.validation import name_problem, ref_problem
from dpagent.timefmt import human_time, span, to_epoch

OUTPUT = click.Choice(["table", "yaml", "json"])


def _path(k: Kind, mesh: str, name: str | None = None) -> str:
    """The REST path; names are checked with the server's rule and escaped, so none can climb out of its segment."""
    scope: tuple[Any, ...] = ("meshes", ("mesh", mesh)) if k.mesh_scoped else ()
    return url_path(*scope, k.plural, *((("name", name),) if name is not None else ()))


def _read_docs(file: str) -> list[Any]:
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {file}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); apply reads YAML "
                          "resource files") from None
    try:
        return safe_yaml.load_all(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{file} is not valid YAML: {safe_yaml.describe(e)}") from None


def _mesh_first(docs: list[Any]) -> list[tuple[int, Any]]:
    """(document number, document), meshes first: one file can hold a new mesh and the resources in it."""
    return sorted(enumerate(docs, 1), key=lambda d: not (isinstance(d[1], dict) and d[1].get("type") == "Mesh"))


def _only_missing_new_mesh(e: ValidationError, new_meshes: set[str], mesh: Any) -> bool:
    """The dry run's one complaint is that the mesh does not exist yet, and this same apply creates it."""
    return mesh in new_meshes and len(e.violations) == 1 and e.violations[0][0] == "mesh" \
        and "does not exist" in e.violations[0][1]


@click.command("apply")
@click.option("-f", "--file", "file", required=True, help="YAML file with one or more resources ('-' for stdin)")
@click.option("--dry-run", is_flag=True, help="validate on the control plane without storing anything")
@api_options
def apply_cmd(file: str, dry_run: bool, api_address: str, api_token_file: str) -> None:
    """Create or update resources. Every document is validated first; if any is invalid, nothing is applied."""
    client = make_client(api_address, api_token_file)
    docs = _read_docs(file)
    if not docs:
        raise ConfigError(f"{file} holds no resources")
    targets, failures = [], []
    new_meshes = {d.get("name") for d in docs if isinstance(d, dict) and d.get("type") == "Mesh"}
    for i, doc in _mesh_first(docs):
        label = f"document {i}"
        try:
            k = _kind_for(doc, label)
            label = f"{k.name} {doc.get('name')!r}"
            path = _path(k, doc.get("mesh", ""), doc.get("name"))
            try:
                client.request("PUT", path, params={"dryRun": "true"}, json=doc)
            except ValidationError as e:
                if not _only_missing_new_mesh(e, new_meshes, doc.get("mesh")):
                    raise
            targets.append((k, path, doc))
        except ValidationError as e:
            failures.append(str(e))
        except DpAgentError as e:
            failures.append(f"{label}: {e}")
    if failures:
        raise ConfigError("nothing was applied; fix these first:\n" + "\n".join(failures))
    for k, path, doc in targets:
        if dry_run:
            click.echo(f"{k.name} {doc['name']!r} is valid (dry run)")
            continue
        resp = client.request("PUT", path, json=doc)
        click.echo(f"{k.name} {doc['name']!r} {'created' if resp.status_code == 201 else 'updated'}")


def _kind_for(doc: Any, label: str) -> Kind:
    if not isinstance(doc, dict):
        raise ValidationError(label, [("$", "must be a mapping with type and name")])
    problems = []
    if not isinstance(doc.get("type"), str) or by_type(doc["type"]) is None:
        problems.append(("type", f"must be one of {', '.join(k.name for k in KINDS)}"))
    if problem := name_problem(doc.get("name")):
        problems.append(("name", problem))
    k = by_type(doc.get("type")) if isinstance(doc.get("type"), str) else None
    if k and k.mesh_scoped and (problem := ref_problem(doc.get("mesh"))):  # the server's mesh_ref rule
        problems.append(("mesh", problem))
    if problems:
        raise ValidationError(label, problems)
    assert k is not None
    return k


def _age(ts: str) -> str:
    t = to_epoch(ts)
    return "?" if t is None else span(time.time() - t)


def _cert_columns(insight: dict[str, Any] | None) -> list[str]:
    m = (insight or {}).get("mTLS") or {}
    if not m:
        return ["-", "-", "-"]
    return [human_time(m.get("certificateExpirationTime")), m.get("issuedBackend", "-"),
            human_time(m.get("lastCertificateRegeneration"))]


def _row(k: Kind, doc: dict[str, Any], insight: dict[str, Any] | None = None) -> list[str]:
    row = [doc.get("mesh", "")] if k.mesh_scoped else []
    row.append(doc["name"])
    if k.name == "Dataplane":
        net = doc.get("networking") or {}
        services = sorted({(i.get("tags") or {}).get("kuma.io/service", "") for i in net.get("inbound") or []})
        row += [net.get("address", ""), ",".join(s for s in services if s), *_cert_columns(insight)]
    elif k.name == "Mesh":
        mtls = doc.get("mtls") or {}
        row.append(f"{mtls['enabledBackend']}" if mtls.get("enabledBackend") else "off")
    elif k.name == "MeshExternalService":  # a resource, not a policy: what apps call and where it goes
        spec = doc.get("spec") or {}
        row.append(f"{doc['name']}.extsvc.mesh.local:{(spec.get('match') or {}).get('port', '')}")
        row.append(",".join(f"{e.get('address')}:{e.get('port')}" for e in spec.get("endpoints") or []) or "-")
    elif k.has_spec:
        ref = ((doc.get("spec") or {}).get("targetRef")) or {"kind": "Mesh"}
        sel = ref.get("labels") or ref.get("tags") or {}
        row.append(ref.get("kind", "") + (f"/{ref['name']}" if ref.get("name") else "")
                   + ("{" + ",".join(f"{a}={b}" for a, b in sorted(sel.items())) + "}" if sel else "")
                   + (f":{ref['sectionName']}" if ref.get("sectionName") else ""))
    row.append(_age(doc.get("creationTime", "")))
    return row


def _header(k: Kind) -> list[str]:
    head = ["MESH"] if k.mesh_scoped else []
    head.append("NAME")
    head += {"Dataplane": ["ADDRESS", "SERVICES", "CERT EXPIRES", "CA BACKEND", "LAST ROTATION"],
             "Mesh": ["MTLS"], "MeshExternalService": ["HOSTNAME", "ENDPOINTS"]}.get(
        k.name, ["TARGET"] if k.has_spec else [])
    return [*head, "AGE"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _emit(data: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@click.command("get")
@click.argument("type_name", metavar="TYPE")
@click.argument("name", required=False)
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@api_options
def get_cmd(type_name: str, name: str | None, mesh: str, output: str, api_address: str, api_token_file: str) -> None:
    """List resources of TYPE (meshes, dataplanes, meshtrafficpermissions), or show one by NAME."""
    k = kind_of(type_name)
    client = make_client(api_address, api_token_file)
    if name:
        doc = client.get(_path(k, mesh, name))
        if output == "table":
            insight = client.get(url_path("meshes", ("mesh", mesh), "dataplanes+insights")).get("items", []) \
                if k.name == "Dataplane" else []
            match = next((i.get("dataplaneInsight") for i in insight if i["dataplane"]["name"] == name), None)
            click.echo(_table([_header(k), _row(k, doc, match)]))
        else:
            _emit(doc, output)
        return
    insights: dict[str, dict[str, Any]] = {}
    if k.name == "Dataplane":
        for item in _list_all(client, url_path("meshes", ("mesh", mesh), "dataplanes+insights")):
            insights[item["dataplane"]["name"]] = item.get("dataplaneInsight") or {}
    items = _list_all(client, _path(k, mesh))
    if output != "table":
        _emit({"total": len(items), "items": items}, output)
    elif not items:
        click.echo(f"no {k.plural}" + (f" in mesh {mesh!r}" if k.mesh_scoped else ""))
    else:
        click.echo(_table([_header(k), *(_row(k, d, insights.get(d["name"])) for d in items)]))


def _list_all(client: ApiClient, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = client.get(path, params={"offset": offset, "size": 1000})
        items += page["items"]
        if not page.get("next"):
            return items
        offset += len(page["items"])


@click.command("delete")
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True)
@api_options
def delete_cmd(type_name: str, name: str, mesh: str, api_address: str, api_token_file: str) -> None:
    """Delete one resource. Deleting a Mesh deletes everything in it."""
    k = kind_of(type_name)
    make_client(api_address, api_token_file).request("DELETE", _path(k, mesh, name))
    click.echo(f"{k.name} {name!r} deleted")


@click.command("inspect")
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("--type", "view", type=click.Choice(["summary", "policies", "config"]), default="summary",
              show_default=True, help="dataplanes only: the summary, the policies per inbound/outbound with the conf "
                                      "they produce, or the Envoy resources the CP generated for it")
@click.option("--config-type", type=click.Choice(["listeners", "clusters", "routes", "endpoints", "secrets"]),
              default=None, help="with --type config: only this resource type")
@api_options
def inspect_cmd(type_name: str, name: str, mesh: str, output: str, view: str, config_type: str | None,
                api_address: str, api_token_file: str) -> None:
    """Explain a dataplane (connection, ACKed config per type, last NACK, certificate, matched policies), or list
    the dataplanes a policy (TYPE = a policy kind, e.g. mtp) selects."""
    k = kind_of(type_name)
    client = make_client(api_address, api_token_file)
    from dpagent.cli import inspect_view

    if k.name != "Dataplane":
        if not k.has_spec:
            raise ConfigError(f"inspect works on dataplanes and policy kinds, not {k.plural}")
        if view != "summary" or config_type:
            raise ConfigError("--type and --config-type apply to `inspect dataplane` only")
        data = client.get(url_path("meshes", ("mesh", mesh), k.plural, ("name", name), "_resources", "dataplanes"))
        _show(data, output, inspect_view.render_affected)
        return
    if config_type and view != "config":
        raise ConfigError("--config-type needs --type config")
    if view == "config":
        params = {"type": config_type} if config_type else None
        data = client.get(url_path("meshes", ("mesh", mesh), "dataplanes", ("name", name), "_config"), params=params)
        _emit(data["resources"], "json" if output == "json" else "yaml")
        return
    if view == "policies":
        path = url_path("meshes", ("mesh", mesh), "dataplanes", ("name", name), "_policies")
        _show(client.get(path), output, inspect_view.render_policies)
        return
    path = url_path("meshes", ("mesh", mesh), "dataplanes", ("name", name), "_inspect")
    _show(client.get(path), output, inspect_view.render)


def _show(data: Any, output: str, table: Any) -> None:
    if output == "table":
        click.echo(table(data))
    else:
        _emit(data, output)
