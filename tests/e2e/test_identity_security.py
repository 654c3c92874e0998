"""The key never leaves the host; certificate requests cannot be abused; bad CA material is explained."""

from __future__ import annotations

import json
import os
import ssl
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from testlib import free_port

from dpagent import pki
from dpagent.controlplane.ca import generate_root_ca

pytestmark = [pytest.mark.envoy]


def dataplane(name: str, app: int) -> str:
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {free_port()}\n    servicePort: {app}\n    tags: {{kuma.io/service: {name}}}\n")


class RecordingProxy:
    """HTTPS in front of the CP's DP server with the CP's own certificate; keeps every request body."""

    def __init__(self, cp: Any) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        outer = self
        upstream = httpx.Client(base_url=cp.url, verify=ssl.create_default_context(cafile=str(cp.ca_file)), timeout=10)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.bodies.append((self.path, body))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type",
                                                                                    "accept")}
                resp = upstream.post(self.path, content=body, headers=headers)
                self.send_response(resp.status_code)
                self.send_header("content-type", resp.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls = cp.data_dir / "tls"
        ctx.load_cert_chain(tls / "server.pem", tls / "server-key.pem")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_private_key_never_leaves_the_host_and_files_are_private(cp, agents, apps, tmp_path):
    proxy = RecordingProxy(cp)
    wd = tmp_path / "wd"
    agents("keyed-1", dataplane("keyed-1", apps["backend"].port), None, "--cp-address", proxy.url,
           "--work-dir", str(wd))
    paths = [p for p, _ in proxy.bodies]
    assert "/bootstrap" in paths and "/certificates" in paths
    for path, body in proxy.bodies:
        assert b"PRIVATE KEY" not in body, f"{path} carried private key material"
    key_file = wd / "identity" / "current" / "key.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_file.resolve().parent).st_mode) == 0o700
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    csr_body = json.loads(next(b for p, b in proxy.bodies if p == "/certificates"))
    csr = x509.load_pem_x509_csr(csr_body["csr"].encode())
    own = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sent = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert own == sent, "the CSR carries the public half of the key on disk"
    served = pki.cert_info((wd / "identity" / "current" / "cert.pem").read_bytes())
    assert list(served.uri_sans) == ["spiffe://default/keyed-1"]


def _csr() -> str:
    return pki.build_csr(pki.generate_private_key(), uri_sans=["spiffe://default/admin-everything"])


def test_certificate_requests_are_bound_bounded_and_rate_limited(cp):
    cp.cli("apply", "-f", "-", input=dataplane("csr-a", 1))
    cp.cli("apply", "-f", "-", input=dataplane("csr-b", 1))
    token_a = cp.token("csr-a")
    with httpx.Client(base_url=cp.url, verify=ssl.create_default_context(cafile=str(cp.ca_file)), timeout=10,
                      headers={"authorization": f"Bearer {token_a}"}) as c:
        ok = c.post("/certificates", json={"mesh": "default", "name": "csr-a", "csr": _csr()})
        assert ok.status_code == 200
        assert list(pki.cert_info(ok.json()["certificate"]).uri_sans) == ["spiffe://default/csr-a"], "CSR SANs ignored"
        other = c.post("/certificates", json={"mesh": "default", "name": "csr-b", "csr": _csr()})
        assert other.status_code == 403 and "csr-a" in other.text
        big = c.post("/certificates", content=b'{"csr": "' + b"A" * 20000 + b'"}',
                     headers={"content-type": "application/json"})
        assert big.status_code == 413 and "larger than" in big.text
        codes = [c.post("/certificates", json={"mesh": "default", "name": "csr-a", "csr": _csr()}).status_code
                 for _ in range(8)]
        assert 429 in codes
        limited = c.post("/certificates", json={"mesh": "default", "name": "csr-a", "csr": _csr()})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    no_token = httpx.post(f"{cp.url}/certificates", verify=ssl.create_default_context(cafile=str(cp.ca_file)),
                          json={"mesh": "default", "name": "csr-b", "csr": _csr()})
    assert no_token.status_code == 401


def test_bad_provided_ca_is_explained_and_nothing_changes(cp, tmp_path: Path):
    good_cert, good_key = generate_root_ca("default", "x")
    _, other_key = generate_root_ca("default", "y")
    (tmp_path / "c.pem").write_text(good_cert)
    (tmp_path / "k.pem").write_text(other_key)
    mesh = (f"type: Mesh\nname: prov\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n"
            f"    conf:\n      cert: {{file: {tmp_path / 'c.pem'}}}\n      key: {{file: {tmp_path / 'k.pem'}}}\n")
    out = cp.cli("apply", "-f", "-", input=mesh, check=False)
    assert out.returncode == 2
    assert "mtls.backends[0].conf" in out.stderr and "does not match" in out.stderr
    missing = mesh.replace(str(tmp_path / "k.pem"), str(tmp_path / "nope.pem"))
    out = cp.cli("apply", "-f", "-", input=missing, check=False)
    assert out.returncode == 2 and "mtls.backends[0].conf.key" in out.stderr and "cannot read" in out.stderr
    assert "prov" not in cp.cli("get", "meshes").stdout, "a rejected Mesh is not stored"
    (tmp_path / "k.pem").write_text(good_key)
    assert cp.cli("apply", "-f", "-", input=mesh).returncode == 0
