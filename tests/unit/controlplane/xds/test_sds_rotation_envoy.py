"""Real Envoy: the generated mTLS inbound listener reads its identity through relative-path file SDS, and swapping
the `identity/current` symlink makes the same Envoy process serve the new certificate."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from _xds_testlib import Pki, envoy_binary, free_port, install_identity, static_bootstrap
from cryptography import x509

from dpagent.controlplane.xds.proxy import LISTENER, MeshContext, generate_proxy
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

pytestmark = pytest.mark.envoy


def _served_serial(port: int, pki: Pki, client: tuple[bytes, bytes], workdir: Path, deadline: float) -> int | None:
    (workdir / "client.pem").write_bytes(client[0])
    (workdir / "client.key").write_bytes(client[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.ca_pem.decode())
    ctx.load_cert_chain(workdir / "client.pem", workdir / "client.key")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return x509.load_der_x509_certificate(der).serial_number
        except OSError:
            time.sleep(0.1)
    return None


def test_symlink_swap_rotates_without_restart(tmp_path: Path) -> None:
    port = free_port()
    mesh = parse_mesh({"type": "Mesh", "name": "default",
                       "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})
    dp = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "db-1", "networking": {
        "address": "127.0.0.1", "inbound": [{"port": port, "servicePort": free_port(),
                                             "tags": {"kuma.io/service": "db", "kuma.io/protocol": "tcp"}}]}})
    resources = generate_proxy(MeshContext(mesh, [dp]), dp, shared={})
    assert len(resources[LISTENER]) == 2  # the inbound and the dynconf listener telling the agent mTLS is on
    pki = Pki()
    install_identity(tmp_path, pki, "spiffe://default/db", 1001)
    config = static_bootstrap(resources, trust_bundle=pki.ca_pem.decode())
    (tmp_path / "envoy.json").write_text(json.dumps(config))
    log = (tmp_path / "envoy.log").open("w")
    proc = subprocess.Popen([envoy_binary(), "-c", "envoy.json", "--disable-hot-restart", "--log-level", "info"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = pki.leaf("spiffe://default/web", 7)
        first = _served_serial(port, pki, client, tmp_path, time.monotonic() + 15)
        assert first == 1001, (tmp_path / "envoy.log").read_text()[-3000:]
        install_identity(tmp_path, pki, "spiffe://default/db", 1002)
        assert os.readlink(tmp_path / "identity" / "current") == "gen-1002"
        deadline = time.monotonic() + 10
        serial = first
        while serial != 1002 and time.monotonic() < deadline:
            serial = _served_serial(port, pki, client, tmp_path, deadline)
            time.sleep(0.05)
        assert serial == 1002, (tmp_path / "envoy.log").read_text()[-3000:]
        assert proc.poll() is None, "Envoy exited: the swap must not need a restart"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
