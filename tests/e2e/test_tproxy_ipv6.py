"""Transparent proxying between two IPv6-only hosts (network namespaces): real ip6tables, real Envoys, mTLS.

The hosts share one veth with only IPv6 addresses (each has an IPv6 default route, so an IPv6 VIP is routable);
the CP runs on host A and listens on [::], agents and Envoys run as uid 5678, apps as uid 1234. The mesh's VIPs
come from an IPv6 range, so `backend.mesh` resolves (AAAA, through the agent's DNS proxy on [::1]) to an address
these hosts can route. Every call must cross both Envoys' [::]:15001 / [::]:15006 capture sockets: mesh calls
over mTLS (the backend sees the caller's mesh identity), other ports through the passthrough clusters, the inbound
one binding ::6.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslib import NetnsPair
from testlib import wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

PY = sys.executable
AGENT_UID, APP_UID = 5678, 1234
A_IP, B_IP = "fd88::1", "fd88::2"
NAMESERVER = "fd88::53"  # nobody answers there: ip6tables redirects it to the agent's DNS proxy
VIP_CIDR = "fd00:240::/112"
VARIANT = "nft"

if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "setpriv", "curl", f"ip6tables-{VARIANT}-restore")):
    pytest.skip("needs root, iproute2, setpriv (util-linux), curl and ip6tables-nft to build IPv6 namespaces",
                allow_module_level=True)

BACKEND_APP = r'''
import http.server, json, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"path": self.path, "xfcc": self.headers.get("x-forwarded-client-cert", ""),
                           "peer": self.client_address[0]}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
S(("::", int(sys.argv[1])), H).serve_forever()
'''

LISTENER = r'''
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"port-" + sys.argv[1].encode()); c.close()
'''

CLIENT = r'''
import json, socket, sys, urllib.request
kind, target = sys.argv[1], sys.argv[2]
if kind == "resolve":
    print(json.dumps(sorted({a[4][0] for a in socket.getaddrinfo(target, 80, type=socket.SOCK_STREAM)})))
elif kind == "http":
    with urllib.request.urlopen(target, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
else:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as s:
        print(json.dumps({"data": s.recv(100).decode()}))
'''


def dataplane(name: str, address: str, port: int, service: str) -> str:
    """The app behind the inbound listens on [::1] too: Envoy reaches it over IPv6 from ::6."""
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: '{address}'\n  inbound:\n"
            f"  - port: {port}\n    serviceAddress: '::1'\n"
            f"    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n"
            f"  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n")


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="dp6-"))
    os.chmod(root, 0o755)
    h = NetnsPair(root, "dp6", {"a": A_IP, "b": B_IP}, nameserver=NAMESERVER, resolv_hosts=("a", "b"))
    h.up()
    try:
        data = root / "cp"
        api = "http://127.0.0.1:15681"
        h.spawn("a", PY, "-m", "dpagent", "cp", "run", "--data-dir", str(data), "--hostname", A_IP,
                "--bind-address", "::", "--api-port", "15681", "--vip-cidr", VIP_CIDR, log="cp.log")
        wait_for(lambda: h.run("a", PY, "-m", "dpagent", "get", "meshes", "--api-address", api, check=False)
                 .returncode == 0, 30, interval=0.3, what="control plane")
        ca = root / "ca.pem"  # the CP's data dir is 0700; agents get the CA like an operator would copy it
        shutil.copy(data / "ca.pem", ca)
        os.chmod(ca, 0o644)
        common = ["--dpagent-uid", str(AGENT_UID), "--redirect-dns", "--iptables-variant", VARIANT]
        h.run("a", PY, "-m", "transparent_proxy.cli", "install", *common, "--exclude-inbound-ports", "5678,5679")
        h.run("b", PY, "-m", "transparent_proxy.cli", "install", *common)
        for name, host, ip, port, service in (("web-1", "a", A_IP, 9090, "web"),
                                              ("backend-1", "b", B_IP, 8080, "backend")):
            h.start_agent(host, name, dataplane(name, ip, port, service), api=api,
                          cp_url=f"https://[{A_IP}]:5678", ca=ca, uid=AGENT_UID)
        h.spawn("b", PY, "-c", BACKEND_APP, "8080", uid=APP_UID, log="backend-app.log")
        h.spawn("b", PY, "-c", LISTENER, "7000", uid=APP_UID, log="b-7000.log")
        for host in ("a", "b"):
            wait_for(lambda host=host: "READY" in h.run(host, "curl", "-s", "127.0.0.1:9902/ready",
                                                        check=False).stdout, 40, interval=0.3,
                     what=f"agent on {host} ready (logs in {root})")
        yield {"hosts": h, "root": root}
    finally:
        h.down()
        if not os.environ.get("DPT_KEEP"):  # keep the logs for debugging
            shutil.rmtree(root, ignore_errors=True)


def client(m: dict[str, Any], kind: str, target: str, uid: int = APP_UID) -> Any:
    out = m["hosts"].run("a", PY, "-c", CLIENT, kind, target, uid=uid, check=False, timeout=20)
    if out.returncode != 0:
        raise AssertionError(out.stdout + out.stderr)
    return json.loads(out.stdout)


def envoy_stat(m: dict[str, Any], host: str, wd: str, name: str) -> int:
    return int(m["hosts"].envoy_stat(host, wd, name))


def test_mesh_name_resolves_to_an_ipv6_vip_and_crosses_both_envoys_over_mtls(mesh):
    addrs = wait_for(lambda: client(mesh, "resolve", "backend.mesh"), 20, interval=0.5,
                     what="backend.mesh from the app (AAAA via the DNS proxy on [::1])")
    assert [ipaddress.ip_address(a) in ipaddress.ip_network(VIP_CIDR) for a in addrs] == [True]
    before = envoy_stat(mesh, "a", "web-1", "cluster.backend.upstream_rq_total")
    r = wait_for(lambda: client(mesh, "http", "http://backend.mesh/via-name"), 20, interval=0.5,
                 what="http://backend.mesh/ from the app")
    assert r["status"] == 200 and r["body"]["path"] == "/via-name"
    assert "URI=spiffe://default/web" in r["body"]["xfcc"], "the backend sees the caller's mesh identity"
    assert r["body"]["peer"] == "::6", "B's Envoy reached the app over IPv6 from the passthrough source"
    assert envoy_stat(mesh, "a", "web-1", "cluster.backend.upstream_rq_total") > before


def test_raw_ipv6_endpoint_address_also_goes_over_mtls(mesh):
    r = client(mesh, "http", f"http://[{B_IP}]:8080/via-ip")
    assert r["status"] == 200 and "URI=spiffe://default/web" in r["body"]["xfcc"]


def test_other_ipv6_ports_pass_through_both_capture_listeners(mesh):
    """A's outbound passthrough and B's inbound passthrough (ORIGINAL_DST to [fd88::2]:7000, bound to ::6)."""
    out_stat = "cluster.outbound_passthrough.upstream_cx_total"
    in_stat = "cluster.inbound_passthrough.upstream_cx_total"
    out0, in0 = envoy_stat(mesh, "a", "web-1", out_stat), envoy_stat(mesh, "b", "backend-1", in_stat)
    assert client(mesh, "tcp", f"[{B_IP}]:7000")["data"] == "port-7000"
    assert envoy_stat(mesh, "a", "web-1", out_stat) == out0 + 1
    assert envoy_stat(mesh, "b", "backend-1", in_stat) == in0 + 1
    assert client(mesh, "tcp", f"[{B_IP}]:7000", uid=AGENT_UID)["data"] == "port-7000"
    assert envoy_stat(mesh, "a", "web-1", out_stat) == out0 + 1, "the agent's UID is not redirected on IPv6 either"
    assert envoy_stat(mesh, "b", "backend-1", in_stat) == in0 + 2, "but B still captures it inbound"
