"""Migrating a running mesh to mTLS with Permissive mode, then to Strict, under fixed-rate load; then a MeshTLS
TLS 1.3 floor refusing a TLS 1.2-only client.

A legacy client outside the mesh calls the backend's inbound in plaintext; `web`'s app calls it through the mesh.
Off → Permissive: both keep working and the mesh calls arrive with the caller's SPIFFE identity (the backend's
Envoy verified a client certificate). Permissive → Strict: the legacy client is refused, the mesh client never
fails.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from e2e.meshlib import Load, dataplane, outbound, put, url, wait_acked
from testlib import free_port, wait_for

from dpagent.controlplane.xds.snapshot import LISTENER

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS: dict[str, int] = {k: free_port() for k in ("b_in", "w_in", "w_out_b")}
WEB_ID, BACKEND_ID = "spiffe://default/web", "spiffe://default/backend"


def mesh_yaml(mode: str | None) -> str:
    """The default Mesh: without mTLS (mode None) or with builtin CA ca-1 in `mode` (STRICT | PERMISSIVE)."""
    if mode is None:
        return "type: Mesh\nname: default\n"
    return ("type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n"
            f"    type: builtin\n    mode: {mode}\n")


class PeerApp:
    """The backend: answers 200 with header `x-peer` = the caller's SPIFFE URI from `x-forwarded-client-cert`
    (what the backend's Envoy verified), or `-` when the request came without one (plaintext)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                xfcc = self.headers.get("x-forwarded-client-cert", "")
                uri = next((p[4:] for p in xfcc.split(";") if p.startswith("URI=")), "-")
                self.send_response(200)
                self.send_header("x-peer", uri)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def mesh(cp, agents, tmp_path_factory):
    cp.cli("apply", "-f", "-", input=mesh_yaml(None))
    app = PeerApp()
    web_wd = tmp_path_factory.mktemp("web-wd")
    agents("backend-1", dataplane("backend-1", "backend", PORTS["b_in"], app.port, "http"), wait=False)
    web = agents("web-1", dataplane("web-1", "web", PORTS["w_in"], 1, "http", outbound(backend=PORTS["w_out_b"])),
                 None, "--work-dir", str(web_wd))
    web.wait_ready()
    for port in (PORTS["w_out_b"], PORTS["b_in"]):
        wait_for(lambda p=port: httpx.get(url(p), timeout=3).status_code == 200, 30, what=f"backend via {port}")
    return {"web_identity": web_wd / "identity" / "current"}


def _client_ctx(identity: Path, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A TLS client holding web's mesh certificate, offering the mesh ALPN value; the server is not verified (the
    question is what the backend accepts, not whom we trust)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(identity / "cert.pem", identity / "key.pem")
    ctx.set_alpn_protocols(["kuma"])
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def _handshake(ctx: ssl.SSLContext) -> tuple[str, list[str]]:
    """(negotiated TLS version, URI SANs of the certificate the backend's inbound presented)."""
    with (socket.create_connection(("127.0.0.1", PORTS["b_in"]), timeout=3) as raw,
          ctx.wrap_socket(raw) as tls):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return str(tls.version()), [str(u) for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]


def _since(load: Load, t: float) -> list[tuple[float, int, str]]:
    return [s for s in load.seen if s[0] > t]


def test_migration_off_permissive_strict_under_load(mesh, cp):
    mesh_load = Load(url(PORTS["w_out_b"]), rate=25, header="x-peer")
    legacy = Load(url(PORTS["b_in"]), rate=25, header="x-peer")
    try:
        wait_for(lambda: len(legacy.seen) > 10 and len(mesh_load.seen) > 10, 10, what="load running")
        assert {v for _, _, v in mesh_load.seen} == {"-"}, "mTLS is off: no identity yet"

        t_permissive = time.monotonic()
        cp.cli("apply", "-f", "-", input=mesh_yaml("PERMISSIVE"))
        wait_for(lambda: len([s for s in _since(mesh_load, t_permissive) if s[2] == WEB_ID]) >= 20, 30,
                 what="mesh calls arriving over mTLS with web's identity")
        t_mtls = next(t for t, _, v in mesh_load.seen if t > t_permissive and v == WEB_ID)
        wait_for(lambda: len([s for s in _since(legacy, t_mtls) if s[1] == 200]) >= 20, 10,
                 what="legacy plaintext calls still served under Permissive")
        # once a mesh call was verified, every later one is: the mesh traffic stays mTLS
        assert {v for _, s, v in _since(mesh_load, t_mtls)} == {WEB_ID}
        assert {v for _, s, v in _since(legacy, t_mtls)} == {"-"}
        _, sans = _handshake(_client_ctx(mesh["web_identity"]))
        assert sans == [BACKEND_ID], f"the Permissive inbound presented {sans}"

        t_strict = time.monotonic()
        cp.cli("apply", "-f", "-", input=mesh_yaml("STRICT"))
        wait_for(lambda: len([s for s in _since(legacy, t_strict) if s[1] == 0]) >= 5, 30,
                 what="the legacy client refused under Strict")
        t_refused = next(t for t, s, _ in legacy.seen if t > t_strict and s == 0)
        wait_for(lambda: len(_since(legacy, t_refused)) >= 10 and len(_since(mesh_load, t_refused)) >= 20, 10,
                 what="load after the switch to Strict")
    finally:
        mesh_load.stop()
        legacy.stop()
    mesh_failed = [s for s in mesh_load.seen if s[1] != 200]
    legacy_before = [s for s in legacy.seen if s[0] < t_strict]
    refused = _since(legacy, t_refused)
    print(f"\nmigration: mesh client {len(mesh_load.seen)} requests, {len(mesh_failed)} failed; legacy client "
          f"{len(legacy_before)} before Strict ({len([s for s in legacy_before if s[1] != 200])} failed), "
          f"{len(refused)} after the refusal began ({len([s for s in refused if s[1] == 200])} served)")
    assert not mesh_failed, f"mesh client failed {len(mesh_failed)} times: {mesh_load.errors[:3]}"
    assert all(s[1] == 200 for s in legacy_before), f"legacy failed before Strict: {legacy.errors[:3]}"
    assert all(s[1] == 0 for s in refused), "a legacy request got through after the refusal"


def test_tls13_floor_refuses_a_tls12_only_client(mesh, cp):
    cp.cli("apply", "-f", "-", input=mesh_yaml("STRICT"))
    before = {"backend-1": (cp.inspect("backend-1").get("xds") or {}).get("types", {}).get(LISTENER, {})
              .get("snapshot_version")}
    put(cp, {"type": "MeshTLS", "mesh": "default", "name": "tls13", "spec": {
        "targetRef": {"kind": "Mesh"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"tlsVersion": {"min": "TLS13"}}}]}})
    wait_acked(cp, before, "the TLS 1.3 floor", LISTENER)
    assert _handshake(_client_ctx(mesh["web_identity"]))[0] == "TLSv1.3"  # same cert and ALPN: accepted
    with pytest.raises(ssl.SSLError):
        _handshake(_client_ctx(mesh["web_identity"], maximum=ssl.TLSVersion.TLSv1_2))
    wait_for(lambda: httpx.get(url(PORTS["w_out_b"]), timeout=3).status_code == 200, 10,
             what="mesh calls under the TLS 1.3 floor (web's upstream TLS follows it)")
