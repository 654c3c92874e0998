"""Traffic leaving the mesh, end to end: network namespaces, real iptables (transparent proxy), real Envoy.

Host A runs the control plane, an agent and the app (uid 1234); host X, outside the mesh, an HTTPS server whose
certificate (made here, by a CA made here) names ext.test, allowed.test and denied.test, and which answers with
the SNI, Host and TLS version it saw. The stories: the Mesh's `networking.outbound.passthrough: false` cuts the
app off from X; a MeshExternalService lets it call X over plain HTTP by `ext.extsvc.mesh.local` while Envoy
originates TLS with SNI ext.test (and a MeshAccessLog `to` it logs those calls); a MeshPassthrough `Matched` with
one domain lets exactly that domain through.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslib import NetnsPair
from testlib import make_ca_and_server_cert, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

PY = sys.executable
AGENT_UID, APP_UID = 5678, 1234
A_IP, X_IP = "10.87.0.1", "10.87.0.2"
API_PORT = 15681
API = f"http://127.0.0.1:{API_PORT}"
LOG_FORMAT = "%KUMA_DESTINATION_SERVICE% %RESPONSE_CODE% %UPSTREAM_HOST%"

if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "setpriv", "curl", "iptables-nft-restore")):
    pytest.skip("needs root, iproute2, setpriv, curl and iptables-nft to build network namespaces",
                allow_module_level=True)

HTTPS_SERVER = r'''
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        c = self.connection
        body = json.dumps({"sni": getattr(c, "seen_sni", None), "host": self.headers.get("host"),
                           "tls": c.version(), "path": self.path}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
def sni(sock, name, _ctx):
    sock.seen_sni = name
ctx.sni_callback = sni
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
'''


DATAPLANE = f"""type: Dataplane
mesh: default
name: web-1
networking:
  address: {A_IP}
  inbound:
  - port: 9090
    tags: {{kuma.io/service: web, kuma.io/protocol: http}}
  transparentProxying: {{redirectPortInbound: 15006, redirectPortOutbound: 15001}}
"""


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="dpx-"))
    os.chmod(root, 0o755)
    h = NetnsPair(root, "dpx", {"a": A_IP, "x": X_IP}, nameserver="10.87.0.53")
    h.up()
    try:
        pki = make_ca_and_server_cert(["ext.test", "allowed.test", "denied.test"])
        for name, data in pki.items():
            (root / f"ext-{name}.pem").write_bytes(data)
            os.chmod(root / f"ext-{name}.pem", 0o644)
        h.spawn("x", PY, "-c", HTTPS_SERVER, str(root / "ext-cert.pem"), str(root / "ext-key.pem"), log="ext.log")
        data = root / "cp"
        h.spawn("a", PY, "-m", "dpagent", "cp", "run", "--data-dir", str(data), "--hostname", A_IP,
                "--api-port", str(API_PORT), log="cp.log")
        wait_for(lambda: h.run("a", PY, "-m", "dpagent", "get", "meshes", "--api-address", API, check=False)
                 .returncode == 0, 30, interval=0.3, what="control plane")
        ca = root / "ca.pem"
        shutil.copy(data / "ca.pem", ca)
        os.chmod(ca, 0o644)
        h.run("a", PY, "-m", "transparent_proxy.cli", "install", "--dpagent-uid", str(AGENT_UID), "--redirect-dns",
              "--iptables-variant", "nft", "--exclude-inbound-ports", "5678,5679")
        h.start_agent("a", "web-1", DATAPLANE, api=API, cp_url=f"https://{A_IP}:5678", ca=ca, uid=AGENT_UID)
        wait_for(lambda: "READY" in h.run("a", "curl", "-s", "127.0.0.1:9902/ready", check=False).stdout, 40,
                 interval=0.3, what=f"agent ready (logs in {root})")
        yield {"hosts": h, "root": root, "ca": pki["ca"].decode()}
    finally:
        h.down()
        if not os.environ.get("DPT_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def apply(w: dict[str, Any], doc: str) -> None:
    w["hosts"].run("a", PY, "-m", "dpagent", "apply", "-f", "-", "--api-address", API, input=doc)


def delete(w: dict[str, Any], kind: str, name: str) -> None:
    w["hosts"].run("a", PY, "-m", "dpagent", "delete", kind, name, "--api-address", API, check=False)


def passthrough(w: dict[str, Any], on: bool) -> None:
    apply(w, f"type: Mesh\nname: default\nnetworking: {{outbound: {{passthrough: {'true' if on else 'false'}}}}}\n")


def curl(w: dict[str, Any], url: str, resolve: str = "") -> dict[str, Any] | None:
    """What the HTTPS server saw for the app's request (uid 1234, so it is captured), or None when refused."""
    extra = ["--resolve", f"{resolve}:443:{X_IP}", "--cacert", str(w["root"] / "ext-ca.pem")] if resolve else []
    out = w["hosts"].run("a", "curl", "-sS", "--max-time", "3", *extra, url, uid=APP_UID, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_passthrough_off_cuts_the_app_off_and_an_external_service_originates_tls(world):
    passthrough(world, True)
    seen = wait_for(lambda: curl(world, "https://ext.test/direct", "ext.test"), 20, interval=0.3,
                    what="X reachable while passthrough is on")
    assert seen["sni"] == "ext.test"
    passthrough(world, False)
    wait_for(lambda: curl(world, "https://ext.test/direct", "ext.test") is None, 20, interval=0.3,
             what="X refused once the Mesh turns passthrough off")
    log = world["root"] / "web-1" / "work" / "ext-access.log"
    ca = world["ca"].replace("\n", "\\n")
    apply(world, f"""type: MeshExternalService
name: ext
mesh: default
spec:
  match: {{type: HostnameGenerator, port: 80, protocol: http}}
  endpoints: [{{address: {X_IP}, port: 443}}]
  tls:
    enabled: true
    verification: {{serverName: ext.test, caCert: {{inlineString: "{ca}"}}}}
---
type: MeshAccessLog
name: log-ext
mesh: default
spec:
  to:
  - targetRef: {{kind: MeshExternalService, name: ext}}
    default:
      backends: [{{type: File, file: {{path: {log}, format: {{type: Plain, plain: "{LOG_FORMAT}"}}}}}}]
""")
    t0 = time.monotonic()
    seen = wait_for(lambda: curl(world, "http://ext.extsvc.mesh.local/via-mesh-name"), 20, interval=0.2,
                    what="http://ext.extsvc.mesh.local/ from the app")
    print(f"external service usable {time.monotonic() - t0:.1f}s after apply")
    assert seen["sni"] == "ext.test", "Envoy originated TLS with the configured SNI"
    assert seen["tls"] in ("TLSv1.2", "TLSv1.3") and seen["path"] == "/via-mesh-name"
    assert seen["host"] == "ext.test", "Host is rewritten to the server's name"
    assert curl(world, "https://ext.test/direct", "ext.test") is None, "the direct route stays closed"
    line = wait_for(lambda: log.exists() and log.read_text().strip(), 10, interval=0.2, what="access log line")
    assert f"extsvc/ext 200 {X_IP}:443" in line, line
    delete(world, "meshexternalservice", "ext")
    delete(world, "meshaccesslog", "log-ext")


def test_matched_passthrough_lets_exactly_the_listed_domain_out(world):
    passthrough(world, False)
    wait_for(lambda: curl(world, "https://allowed.test/", "allowed.test") is None, 20, interval=0.3,
             what="X refused with passthrough off")
    apply(world, """type: MeshPassthrough
name: one-domain
mesh: default
spec:
  targetRef: {kind: Mesh}
  default:
    passthroughMode: Matched
    appendMatch: [{type: Domain, value: allowed.test, port: 443, protocol: tls}]
""")
    seen = wait_for(lambda: curl(world, "https://allowed.test/", "allowed.test"), 20, interval=0.2,
                    what="allowed.test let through")
    assert seen["sni"] == "allowed.test" and seen["host"] == "allowed.test"
    for _ in range(3):  # the same server, IP and port: only the name differs
        assert curl(world, "https://denied.test/", "denied.test") is None, "a domain the policy does not list"
        assert curl(world, "https://allowed.test/", "allowed.test") is not None
    delete(world, "meshpassthrough", "one-domain")
    wait_for(lambda: curl(world, "https://allowed.test/", "allowed.test") is None, 20, interval=0.3,
             what="allowed.test refused again once the policy is gone")
    passthrough(world, True)
