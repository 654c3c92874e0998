"""Kuma 2.14 parity for Dataplane and Mesh: one table of inputs, each accepted or refused at exact field paths.

The same rules then run through a real control plane (REST API and `dpagent apply`) and through the agent's
local validation, so the three entry points cannot drift apart. docs/kuma-compatibility.md explains each row.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from testlib import LocalControlPlane, terminate, wait_for

from dpagent.agent.dataplane import load_dataplane
from dpagent.durations import parse_duration
from dpagent.errors import ValidationError
from dpagent.model.dataplane import validate_dataplane
from dpagent.model.mesh import validate_mesh

DAY = 86400.0


def dp(**changes: Any) -> dict[str, Any]:
    """A valid Dataplane; `changes` are dotted paths (`networking.address`) set on a deep copy."""
    doc: dict[str, Any] = {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 8080, "servicePort": 18080, "tags": {"kuma.io/service": "web"}}]}}
    return _set(doc, changes)


def mesh(**changes: Any) -> dict[str, Any]:
    return _set({"type": "Mesh", "name": "default"}, changes)


def _set(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value
    return doc


def builtin(name: str = "ca-1", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "builtin", **kw}


def mtls(*backends: dict[str, Any], enabled: str = "ca-1") -> dict[str, Any]:
    return {"enabledBackend": enabled, "backends": list(backends)}


def tcp_log(address: str) -> dict[str, Any]:
    return {"backends": [{"name": "logstash", "type": "tcp", "conf": {"address": address}}]}


def inbound(port: int, **kw: Any) -> dict[str, Any]:
    return {"port": port, "tags": {"kuma.io/service": "web"}, **kw}


ACCEPTED: list[str] = []
IB = "networking.inbound"
ADMIN = "networking.admin.port"

# (case, validator, document, [] when Kuma and we accept it, else the exact violation paths)
CASES: list[tuple[str, Callable[[Any], list[tuple[str, str]]], dict[str, Any], list[str]]] = [
    # -- durations: Kuma's d/w/y units wherever a duration is read --
    ("caCert expiration in years (Kuma's mTLS docs)", validate_mesh,
     mesh(mtls=mtls(builtin(conf={"caCert": {"expiration": "10y"}}))), ACCEPTED),
    ("dpCert rotation in days", validate_mesh,
     mesh(mtls=mtls(builtin(dpCert={"rotation": {"expiration": "1d"}}))), ACCEPTED),
    ("dpCert rotation in weeks", validate_mesh,
     mesh(mtls=mtls(builtin(dpCert={"rotation": {"expiration": "2w"}}))), ACCEPTED),
    ("unknown duration unit", validate_mesh,
     mesh(mtls=mtls(builtin(conf={"caCert": {"expiration": "10x"}}))), ["mtls.backends[0].conf.caCert.expiration"]),
    ("serviceProbe interval in Go form", validate_dataplane,
     dp(networking__inbound=[inbound(8080, serviceProbe={"interval": "5s", "timeout": "2s", "tcp": {}})]), ACCEPTED),
    ("serviceProbe zero interval", validate_dataplane,
     dp(networking__inbound=[inbound(8080, serviceProbe={"interval": "0s", "healthyThreshold": 0})]),
     [f"{IB}[0].serviceProbe.interval", f"{IB}[0].serviceProbe.healthyThreshold"]),
    # -- names: lowercase RFC 1123 subdomains, no '_' --
    ("dotted and dashed name", validate_dataplane, dp(name="web-1.eu-west"), ACCEPTED),
    ("underscore in a Dataplane name", validate_dataplane, dp(name="web_1"), ["name"]),
    ("underscore in a Mesh name", validate_mesh, mesh(name="my_mesh"), ["name"]),
    ("upper case name", validate_dataplane, dp(name="Web-1"), ["name"]),
    ("name ending in '-'", validate_dataplane, dp(name="web-"), ["name"]),
    ("empty label between dots", validate_dataplane, dp(name="web..1"), ["name"]),
    ("name of 254 characters", validate_dataplane, dp(name="a" * 254), ["name"]),
    ("name of 253 characters", validate_dataplane, dp(name="a" * 253), ACCEPTED),
    ("mesh reference with '_' (Kuma keeps it for old meshes)", validate_dataplane, dp(mesh="old_mesh"), ACCEPTED),
    ("mesh reference with upper case", validate_dataplane, dp(mesh="Prod"), ["mesh"]),
    # -- tags: '/' only in keys, never '*' --
    ("tag key with '/' and value with ':'", validate_dataplane,
     dp(networking__inbound=[{"port": 8080, "tags": {"kuma.io/service": "web", "kuma.io/zone": "eu:1_a.b-c"}}]),
     ACCEPTED),
    ("tag value with '/'", validate_dataplane,
     dp(networking__inbound=[{"port": 8080, "tags": {"kuma.io/service": "web", "version": "v1/beta"}}]),
     [f'{IB}[0].tags["version"]']),
    ("tag value '*'", validate_dataplane,
     dp(networking__inbound=[{"port": 8080, "tags": {"kuma.io/service": "*"}}]),
     [f'{IB}[0].tags["kuma.io/service"]']),
    ("outbound tag value with '/'", validate_dataplane,
     dp(networking__outbound=[{"port": 9000, "tags": {"kuma.io/service": "a/b"}}]),
     ['networking.outbound[0].tags["kuma.io/service"]']),
    # -- Dataplane addresses and ports --
    ("unspecified IPv4 address", validate_dataplane, dp(networking__address="0.0.0.0"), ["networking.address"]),
    ("unspecified IPv6 address", validate_dataplane, dp(networking__address="::"), ["networking.address"]),
    ("hostname address", validate_dataplane, dp(networking__address="vm-1.example.com"), ACCEPTED),
    ("IPv6 address, transparent proxy dual stack", validate_dataplane,
     dp(networking__address="fd00::1", networking__transparentProxying={
         "redirectPortInbound": 15006, "redirectPortOutbound": 15001, "ipFamilyMode": "DualStack"}), ACCEPTED),
    ("transparent proxy ipFamilyMode IPv4", validate_dataplane,
     dp(networking__transparentProxying={"ipFamilyMode": "IPv4"}), ACCEPTED),
    ("transparent proxy ipFamilyMode unknown", validate_dataplane,
     dp(networking__transparentProxying={"ipFamilyMode": "Both"}), ["networking.transparentProxying.ipFamilyMode"]),
    ("admin port on an inbound listening on loopback", validate_dataplane,
     dp(networking__address="127.0.0.1", networking__inbound=[inbound(9901, servicePort=19901)],
        networking__admin={"port": 9901}), [ADMIN]),
    ("admin port on the application port behind an inbound", validate_dataplane,
     dp(networking__admin={"port": 18080}), [ADMIN]),
    ("admin port on an inbound listening on another address", validate_dataplane,
     dp(networking__inbound=[inbound(9901, servicePort=19901)], networking__admin={"port": 9901}), ACCEPTED),
    ("admin port on an outbound", validate_dataplane,
     dp(networking__outbound=[{"port": 9901, "tags": {"kuma.io/service": "db"}}], networking__admin={"port": 9901}),
     [ADMIN]),
    ("repeated inbound port on one address (we refuse: one would be lost)", validate_dataplane,
     dp(networking__inbound=[inbound(8080, servicePort=1), inbound(8080, servicePort=2)]), [f"{IB}[1].port"]),
    ("same inbound port on two addresses", validate_dataplane,
     dp(networking__inbound=[inbound(8080, address="10.0.0.1"), inbound(8080, address="10.0.0.2")]), ACCEPTED),
    ("application on the address and port Envoy listens on", validate_dataplane,
     dp(networking__inbound=[inbound(8080, serviceAddress="10.0.0.1")]), [f"{IB}[0].serviceAddress"]),
    ("application on Envoy's address, another port", validate_dataplane,
     dp(networking__inbound=[inbound(8080, serviceAddress="10.0.0.1", servicePort=18080)]), ACCEPTED),
    ("outbound with both backendRef and tags", validate_dataplane,
     dp(networking__outbound=[{"port": 9000, "tags": {"kuma.io/service": "db"}, "backendRef": {"name": "db"}}]),
     ["networking.outbound[0].backendRef"]),
    ("inbound protocol field outside Kuma's list", validate_dataplane,
     dp(networking__inbound=[inbound(8080, protocol="tls")]), [f"{IB}[0].protocol"]),
    ("delegated gateway tagged http", validate_dataplane,
     dp(networking__inbound=[], networking__gateway={"tags": {"kuma.io/service": "gw", "kuma.io/protocol": "http"}}),
     ['networking.gateway.tags["kuma.io/protocol"]']),
    ("outbound backendRef of an unknown kind", validate_dataplane,
     dp(networking__outbound=[{"port": 9000, "backendRef": {"kind": "Dataplane", "name": "db", "port": 5432}}]),
     ["networking.outbound[0].backendRef.kind"]),
    ("unknown top-level field (we refuse: a typo would be dropped)", validate_dataplane,
     dp(netwroking={"address": "10.0.0.1"}), ["netwroking"]),
    # -- labels --
    ("kuma.io/mesh label naming the resource's mesh", validate_dataplane,
     dp(labels={"kuma.io/mesh": "default", "team": "payments"}), ACCEPTED),
    ("kuma.io/mesh label contradicting mesh", validate_dataplane,
     dp(labels={"kuma.io/mesh": "other"}), ['labels["kuma.io/mesh"]']),
    ("kuma.io/mesh label on a Mesh", validate_mesh, mesh(labels={"kuma.io/mesh": "default"}),
     ['labels["kuma.io/mesh"]']),
    ("label value with '/'", validate_mesh, mesh(labels={"team": "a/b"}), ['labels["team"]']),
    ("label name with two '/'", validate_dataplane, dp(labels={"a/b/c": "x"}), ['labels["a/b/c"]']),
    # -- Mesh --
    ("TCP log backend HOST:PORT", validate_mesh, mesh(logging=tcp_log("logstash.internal:5000")), ACCEPTED),
    ("TCP log backend IPv6 [HOST]:PORT", validate_mesh, mesh(logging=tcp_log("[::1]:5000")), ACCEPTED),
    ("TCP log backend without port", validate_mesh, mesh(logging=tcp_log("logstash")),
     ["logging.backends[0].conf.address"]),
    ("TCP log backend bare IPv6", validate_mesh, mesh(logging=tcp_log("::1:5000")),
     ["logging.backends[0].conf.address"]),
    ("file log backend without path, unknown default", validate_mesh,
     mesh(logging={"defaultBackend": "x", "backends": [{"name": "f", "type": "file", "conf": {}}]}),
     ["logging.backends[0].conf.path", "logging.defaultBackend"]),
    ("log backend of unknown type", validate_mesh,
     mesh(logging={"backends": [{"name": "s", "type": "syslog"}]}), ["logging.backends[0].type"]),
    ("two log backends with one name", validate_mesh,
     mesh(logging={"backends": [{"name": "f", "type": "file", "conf": {"path": "/a"}},
                                {"name": "f", "type": "file", "conf": {"path": "/b"}}]}), ["logging.backends[1].name"]),
    ("zone egress with mTLS", validate_mesh, mesh(routing={"zoneEgress": True}, mtls=mtls(builtin())), ACCEPTED),
    ("zone egress without mTLS", validate_mesh, mesh(routing={"zoneEgress": True}), ["mtls"]),
    ("outbound passthrough off", validate_mesh, mesh(networking={"outbound": {"passthrough": False}}), ACCEPTED),
    ("outbound passthrough not a bool", validate_mesh, mesh(networking={"outbound": {"passthrough": "no"}}),
     ["networking.outbound.passthrough"]),
    ("zone egress with backends but none enabled", validate_mesh,
     mesh(routing={"zoneEgress": True}, mtls=mtls(builtin(), enabled="")), ["mtls"]),
    ("several CA backends (we allow it: CA rotation)", validate_mesh,
     mesh(mtls=mtls(builtin("ca-1"), builtin("ca-2"), enabled="ca-2")), ACCEPTED),
    ("provided CA from a secret (its existence is checked on apply)", validate_mesh,
     mesh(mtls=mtls({"name": "ca-1", "type": "provided", "conf": {"cert": {"secret": "c"}, "key": {"file": "/k"}}})),
     ACCEPTED),
]


@pytest.mark.parametrize(("validate", "doc", "paths"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parity_table(validate: Callable[[Any], list[tuple[str, str]]], doc: dict[str, Any],
                      paths: list[str]) -> None:
    violations = validate(doc)
    assert [p for p, _ in violations] == paths, violations
    assert all(msg for _, msg in violations)


@pytest.mark.parametrize(("text", "seconds"), [("10y", 10 * 365 * DAY), ("2w", 14 * DAY), ("1d", DAY),
                                               ("1d12h", 1.5 * DAY), ("720h", 30 * DAY)])
def test_one_duration_parser_knows_kuma_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_config_settings_take_kuma_units() -> None:
    from dpagent.config import resolve
    from dpagent.controlplane.settings import CP_SETTINGS

    res = resolve(CP_SETTINGS, {}, env={"KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": "1d"}, file_doc={})
    assert res.values["deregistration_delay"] == DAY


def test_documents_stored_under_older_rules_keep_working() -> None:
    """Tightened rules apply when a resource is written, not when a stored one is read (Kuma does the same):
    a Dataplane stored before names lost '_' and tag values lost '/' still gets its configuration."""
    from dpagent.controlplane.xds.sync import build_mesh_state, proxy_snapshot

    legacy = dp(name="web_1", labels={"team": "a:b"}, networking__inbound=[
        {"port": 8080, "servicePort": 18080, "tags": {"kuma.io/service": "web", "version": "v1/beta"}}])
    assert [p for p, _ in validate_dataplane(legacy)] == ["name", 'labels["team"]', f'{IB}[0].tags["version"]']
    state = build_mesh_state(mesh(), [legacy], {})
    assert proxy_snapshot(state, state.by_name["web_1"]).resources


def test_tproxy_retry_sleep_is_a_duration() -> None:
    """Kuma writes `retry.sleepBetweenRetries: 2s`; the transparent-proxy config reads it with the same parser."""
    from transparent_proxy.config import ConfigError, build_config

    assert build_config(flags={"sleep-between-retries": "500ms"}).sleep_between_retries == 0.5
    assert build_config(file_values={"sleep-between-retries": "2s"}).sleep_between_retries == 2.0
    with pytest.raises(ConfigError, match="sleep-between-retries"):
        build_config(flags={"sleep-between-retries": ["2s"]})


def test_messages_name_the_rule() -> None:
    (path, msg), = validate_dataplane(dp(name="web_1"))
    assert path == "name" and "'_' is not allowed" in msg
    (path, msg), = validate_dataplane(dp(networking__address="0.0.0.0"))
    assert "unspecified" in msg and "routable" in msg
    (path, msg), = validate_dataplane(dp(labels={"kuma.io/mesh": "other"}))
    assert "'other'" in msg and "'default'" in msg


def test_agent_refuses_locally_with_the_same_rule() -> None:
    """`dpagent run` validates the rendered template before contacting the CP: same paths as the CP."""
    template = ("type: Dataplane\nmesh: default\nname: {{ name }}\nlabels: {kuma.io/mesh: prod}\nnetworking:\n"
                "  address: '::'\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web, version: v1/beta}\n")
    with pytest.raises(ValidationError) as err:
        load_dataplane(template, "", {"name": "web_1"})
    assert [p for p, _ in err.value.violations] == [
        "name", 'labels["kuma.io/mesh"]', "networking.address", 'networking.inbound[0].tags["version"]']


NAME_SAMPLES = ["web-1", "web-1.eu-west", "web_1", "Web-1", "web-", "..", "a" * 254]
MESH_SAMPLES = ["default", "old_mesh", "Prod", "..", "a/b"]


@pytest.mark.parametrize("name", NAME_SAMPLES)
@pytest.mark.parametrize("mesh_name", MESH_SAMPLES)
def test_cli_api_and_agent_judge_names_alike(name: str, mesh_name: str) -> None:
    """`dpagent apply` checks name and mesh before its request, the CP validates the document, the agent its
    rendered template: all three refuse the same fields (the CLI once refused `mesh: old_mesh`, which the CP keeps
    for meshes made before Kuma 2.5)."""
    from dpagent.cli.resources import _kind_for

    doc = dp(name=name, mesh=mesh_name)
    api = [p for p, _ in validate_dataplane(doc) if p in ("name", "mesh")]
    try:
        _kind_for(doc, "document 0")
        cli: list[str] = []
    except ValidationError as e:
        cli = [p for p, _ in e.violations]
    template = f"type: Dataplane\nmesh: '{mesh_name}'\nname: '{{{{ name }}}}'\nnetworking:\n  address: 10.0.0.1\n" \
               "  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n"
    try:
        load_dataplane(template, "", {"name": name})
        agent: list[str] = []
    except ValidationError as e:
        agent = [p for p, _ in e.violations if p in ("name", "mesh")]
    assert set(cli) == set(api) == set(agent), (cli, api, agent)
    assert ("name" in api) == (name not in ("web-1", "web-1.eu-west"))
    assert ("mesh" in api) == (mesh_name not in ("default", "old_mesh"))


# -- through a real control plane process: the REST API and the CLI --

def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}


def _running(cp: LocalControlPlane, root: Path) -> Iterator[LocalControlPlane]:
    """The control plane as a process, logging to <root>/cp.log, for as long as the caller's fixture lives."""
    log = (root / "cp.log").open("w")
    proc = subprocess.Popen(cp.command(sys.executable), stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        wait_for(lambda: proc.poll() is None and httpx.get(cp.api, timeout=1).status_code == 200, 30,
                 what=f"control plane API (log: {root / 'cp.log'})")
        yield cp
    finally:
        terminate(proc)
        log.close()


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    root = tmp_path_factory.mktemp("parity-cp")
    cp = LocalControlPlane(root / "data")
    yield from _running(cp, root)


def _cli(cp: LocalControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpagent", *args, "--api-address", cp.api], input=stdin,
                          capture_output=True, text=True, env=_env(), timeout=60)


@pytest.mark.parametrize(("path", "doc", "field"), [
    ("/meshes/my_mesh", mesh(name="my_mesh"), "name"),
    ("/meshes/default/dataplanes/web-1", dp(labels={"kuma.io/mesh": "prod"}), 'labels["kuma.io/mesh"]'),
    ("/meshes/default", mesh(logging=tcp_log("logstash")), "logging.backends[0].conf.address"),
    ("/meshes/default/meshtrafficpermissions/p", {  # the envelope check covers kinds whose model skips it
        "type": "MeshTrafficPermission", "mesh": "default", "name": "p", "labels": {"kuma.io/mesh": "prod"},
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                                                          "default": {"action": "Allow"}}]}},
     'labels["kuma.io/mesh"]'),
])
def test_rest_api_refuses_with_the_field(cp: LocalControlPlane, path: str, doc: dict[str, Any], field: str) -> None:
    r = httpx.put(cp.api + path, json=doc, timeout=10)
    assert r.status_code == 400, r.text
    assert [c["field"] for c in r.json()["causes"]] == [field]


def test_rest_api_accepts_kuma_units(cp: LocalControlPlane) -> None:
    doc = mesh(name="units", mtls=mtls(builtin(conf={"caCert": {"expiration": "10y"}},
                                               dpCert={"rotation": {"expiration": "1d"}})))
    r = httpx.put(f"{cp.api}/meshes/units", json=doc, timeout=30)
    assert r.status_code == 201, r.text
    out = _cli(cp, "token", "generate", "--name", "web-1", "--mesh", "units", "--valid-for", "1y")
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), options={"verify_signature": False})
    assert 365 * DAY <= claims["exp"] - claims["iat"] <= 365 * DAY + 30


def test_cli_apply_refuses_with_exit_2_and_the_field(cp: LocalControlPlane, tmp_path: Path) -> None:
    bad = tmp_path / "dp.yaml"
    bad.write_text("type: Dataplane\nmesh: default\nname: web-2\nnetworking:\n  address: 0.0.0.0\n  inbound:\n"
                   "  - port: 8080\n    tags: {kuma.io/service: web}\n")
    out = _cli(cp, "apply", "-f", str(bad))
    assert out.returncode == 2, out.stderr
    assert "networking.address" in out.stderr and "unspecified" in out.stderr
    assert httpx.get(f"{cp.api}/meshes/default/dataplanes/web-2", timeout=5).status_code == 404


def test_token_tag_value_message_states_the_rule(cp: LocalControlPlane) -> None:
    r = httpx.post(f"{cp.api}/tokens/dataplane", json={"mesh": "default", "name": "web-1",
                                                      "tags": {"version": ["v1/beta"]}}, timeout=10)
    assert r.status_code == 400, r.text
    (cause,) = r.json()["causes"]
    assert cause["field"] == 'tags["version"]' and "no '/' or '*'" in cause["message"], cause


LEGACY_DP = {"type": "Dataplane", "mesh": "old_mesh", "name": "web_1", "networking": {
    "address": "10.0.0.1", "inbound": [{"port": 8080, "servicePort": 18080, "tags": {"kuma.io/service": "web"}}]}}


@pytest.fixture(scope="module")
def legacy_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    """A control plane whose store already holds a mesh and a Dataplane named under Kuma's pre-2.5 rules ('_'),
    as an older release could have stored them (written into the store directly: the API refuses such names)."""
    import asyncio

    from dpagent.controlplane.store.sqlite import SqliteStore

    root = tmp_path_factory.mktemp("legacy-cp")
    cp = LocalControlPlane(root / "data")
    cp.data_dir.mkdir()

    async def seed() -> None:
        async with await SqliteStore.open(cp.data_dir / "store.db") as store:
            await store.create("Mesh", "", "old_mesh", {"type": "Mesh", "name": "old_mesh"})
            await store.create("Dataplane", "old_mesh", "web_1", LEGACY_DP)

    asyncio.run(seed())
    yield from _running(cp, root)


def test_cli_reaches_resources_stored_under_older_rules(legacy_cp: LocalControlPlane, tmp_path: Path) -> None:
    """Kept working means reachable: the CLI reads, re-tokens, adds to and deletes what an older release stored
    with '_' in its names, while a new name with '_' is still refused."""
    out = _cli(legacy_cp, "get", "dataplane", "web_1", "--mesh", "old_mesh", "-o", "json")
    assert out.returncode == 0 and '"web_1"' in out.stdout, out.stderr
    out = _cli(legacy_cp, "token", "generate", "--name", "web_1", "--mesh", "old_mesh", "--valid-for", "1h")
    assert out.returncode == 0, out.stderr
    assert jwt.decode(out.stdout.strip(), options={"verify_signature": False})["Name"] == "web_1"
    new = tmp_path / "dp.yaml"
    new.write_text("type: Dataplane\nmesh: old_mesh\nname: web-2\nnetworking:\n  address: 10.0.0.2\n  inbound:\n"
                   "  - port: 8080\n    tags: {kuma.io/service: web}\n")
    out = _cli(legacy_cp, "apply", "-f", str(new))
    assert out.returncode == 0, out.stderr
    new.write_text(new.read_text().replace("web-2", "web_3"))
    out = _cli(legacy_cp, "apply", "-f", str(new))
    assert out.returncode == 2 and "'_' is not allowed" in out.stderr, out.stderr
    out = _cli(legacy_cp, "delete", "dataplane", "web_1", "--mesh", "old_mesh")
    assert out.returncode == 0, out.stderr
    assert httpx.get(f"{legacy_cp.api}/meshes/old_mesh/dataplanes/web_1", timeout=5).status_code == 404
    out = _cli(legacy_cp, "get", "dataplane", "..", "--mesh", "old_mesh")
    assert out.returncode == 2 and "is not a valid name" in out.stderr, out.stderr
