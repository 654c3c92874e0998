"""Transparent proxying across two hosts (network namespaces), real iptables, real Envoys, mTLS between them.

Host A runs the control plane, an agent and a client app; host B an agent and the backend app. Agents and
Envoys run as uid 5678 (exempt from redirection), apps as uid 1234. The client calls `http://backend.mesh/`
and a raw IP:port of B; both must cross both Envoys over mTLS, proven by the caller identity the backend sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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
A_IP, B_IP = "10.88.0.1", "10.88.0.2"

if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "setpriv", "curl")):
    pytest.skip("needs root, iproute2, setpriv (util-linux) and curl to build network namespaces",
                allow_module_level=True)

BACKEND_APP = r'''
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"path": self.path, "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''

LISTENER = r'''
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"port-" + sys.argv[1].encode()); c.close()
'''

CLIENT = r'''
import json, socket, sys, urllib.request
kind, target = sys.argv[1], sys.argv[2]
if kind == "http":
    with urllib.request.urlopen(target, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
else:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        print(json.dumps({"data": s.recv(100).decode()}))
'''


def dataplane(name: str, address: str, port: int, service: str) -> str:
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n"
            f"  - port: {port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n"
            f"  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n")


class Hosts(NetnsPair):
    def __init__(self, variant: str, root: Path) -> None:
        super().__init__(root, "dpt", {"a": A_IP, "b": B_IP}, nameserver="10.88.0.53")
        self.variant = variant
        self.cp: subprocess.Popen[str] | None = None

    def iptables_save(self, host: str) -> str:
        """Both families, without the timestamp comments and packet counters iptables-save adds."""
        text = (self.run(host, f"iptables-{self.variant}-save").stdout
                + self.run(host, f"ip6tables-{self.variant}-save").stdout)
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)  # packet counters move with traffic, rules do not
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    def foreign_rules(self, host: str) -> None:
        """What a real host already has (a NAT masquerade, a raw-table exception, a firewall rule), per family."""
        for tool in (f"iptables-{self.variant}", f"ip6tables-{self.variant}"):
            net = "10.99.0.0/24" if tool.startswith("iptables") else "fd99::/64"
            self.run(host, tool, "-t", "nat", "-A", "POSTROUTING", "-s", net, "-j", "MASQUERADE")
            self.run(host, tool, "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9999", "-j", "ACCEPT")
            self.run(host, tool, "-A", "INPUT", "-p", "tcp", "--dport", "9998", "-j", "ACCEPT")


API = "http://127.0.0.1:15681"
COMMON = ["--dpagent-uid", str(AGENT_UID), "--redirect-dns"]
INSTALL_FLAGS = {"a": ["--exclude-inbound-ports", "5678,5679", "--exclude-outbound-ports", "2222"], "b": []}


def start_cp(h: Hosts, data: Path) -> None:
    """The CP on host A (also used to bring it back after a test stopped it); `h.cp` is its process."""
    h.cp = h.spawn("a", PY, "-m", "dpagent", "cp", "run", "--data-dir", str(data), "--hostname", A_IP,
                   "--api-port", "15681", log="cp.log")
    wait_for(lambda: h.run("a", PY, "-m", "dpagent", "get", "meshes", "--api-address", API, check=False)
             .returncode == 0, 30, interval=0.3, what="control plane")


def install(h: Hosts, host: str) -> None:
    h.run(host, PY, "-m", "transparent_proxy.cli", "install", *COMMON, "--iptables-variant", h.variant,
          *INSTALL_FLAGS[host])


@pytest.fixture(scope="module", params=["nft", "legacy"])
def mesh(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    variant = request.param
    if not shutil.which(f"iptables-{variant}-restore"):
        pytest.skip(f"iptables-{variant} is not installed")
    root = Path(tempfile.mkdtemp(prefix="dpt-"))
    os.chmod(root, 0o755)
    h = Hosts(variant, root)
    h.up()
    try:
        data = root / "cp"
        start_cp(h, data)
        api = API
        ca = root / "ca.pem"  # the CP's data dir is 0700; agents get the CA like an operator would copy it
        shutil.copy(data / "ca.pem", ca)
        os.chmod(ca, 0o644)
        for host in ("a", "b"):
            h.foreign_rules(host)
        before = {host: h.iptables_save(host) for host in ("a", "b")}
        for host in ("a", "b"):
            install(h, host)
        for name, host, ip, port, service in (("web-1", "a", A_IP, 9090, "web"), ("backend-1", "b", B_IP, 8080,
                                                                                   "backend")):
            h.start_agent(host, name, dataplane(name, ip, port, service), api=api, cp_url=f"https://{A_IP}:5678", ca=ca,
                          uid=AGENT_UID)
        h.spawn("b", PY, "-c", BACKEND_APP, "8080", uid=APP_UID, log="backend-app.log")
        h.spawn("b", PY, "-c", LISTENER, "22", log="b-22.log")
        h.spawn("b", PY, "-c", LISTENER, "2222", log="b-2222.log")
        for host in ("a", "b"):
            wait_for(lambda host=host: "READY" in h.run(host, "curl", "-s", "127.0.0.1:9902/ready",
                                                        check=False).stdout, 40, interval=0.3,
                     what=f"agent on {host} ready (logs in {root})")
        yield {"hosts": h, "before": before, "api": api, "root": root, "data": data}
    finally:
        h.down()
        if not os.environ.get("DPT_KEEP"):  # keep the logs for debugging
            shutil.rmtree(root, ignore_errors=True)


def client(m: dict[str, Any], kind: str, target: str, uid: int = APP_UID) -> dict[str, Any]:
    out = m["hosts"].run("a", PY, "-c", CLIENT, kind, target, uid=uid, check=False, timeout=20)
    if out.returncode != 0:
        raise AssertionError(out.stdout + out.stderr)
    return json.loads(out.stdout)


def connected(m: dict[str, Any], name: str) -> bool:
    out = m["hosts"].run("a", "curl", "-s", f"{m['api']}/meshes/default/dataplanes/{name}/_inspect", check=False)
    return bool(out.returncode == 0 and json.loads(out.stdout or "{}").get("xds", {}).get("connected"))


def envoy_stat(m: dict[str, Any], host: str, wd: str, name: str) -> int:
    return int(m["hosts"].envoy_stat(host, wd, name))


def test_mesh_name_resolves_to_a_vip_and_crosses_both_envoys_over_mtls(mesh):
    r = wait_for(lambda: client(mesh, "http", "http://backend.mesh/via-name"), 30, interval=0.5,
                 what="http://backend.mesh/ from the app")
    assert r["status"] == 200 and r["body"]["path"] == "/via-name"
    assert "URI=spiffe://default/web" in r["body"]["xfcc"], "the backend sees the caller's mesh identity"
    assert envoy_stat(mesh, "a", "web-1", "cluster.backend.upstream_rq_total") >= 1


def test_raw_ip_of_a_mesh_service_also_goes_over_mtls(mesh):
    r = client(mesh, "http", f"http://{B_IP}:8080/via-ip")
    assert r["status"] == 200 and "URI=spiffe://default/web" in r["body"]["xfcc"]


def test_direct_access_reaches_that_endpoint_over_mtls(mesh):
    """`directAccessServices: [backend]`: a raw-IP call to B now goes to exactly that ip:port through the
    `direct_access` cluster (not balanced over the service's cluster), still over mTLS."""
    h = mesh["hosts"]
    doc = mesh["root"] / "web-direct.yaml"
    doc.write_text(dataplane("web-1", A_IP, 9090, "web") + "    directAccessServices: [backend]\n")
    os.chmod(doc, 0o644)
    h.run("a", PY, "-m", "dpagent", "apply", "-f", str(doc), "--api-address", mesh["api"])
    stat = "cluster.direct_access.upstream_cx_total"
    wait_for(lambda: "direct_access" in h.run("a", "curl", "-s", "--unix-socket",
                                               str(mesh["root"] / "web-1" / "work" / "envoy-admin.sock"),
                                               "http://admin/listeners").stdout, 20, interval=0.3,
             what="the direct-access listener on web-1's Envoy")
    before, via_service = envoy_stat(mesh, "a", "web-1", stat), envoy_stat(mesh, "a", "web-1",
                                                                            "cluster.backend.upstream_rq_total")
    r = client(mesh, "http", f"http://{B_IP}:8080/direct")
    assert r["status"] == 200 and r["body"]["path"] == "/direct"
    assert "URI=spiffe://default/web" in r["body"]["xfcc"], "direct access keeps mTLS and the caller's identity"
    assert envoy_stat(mesh, "a", "web-1", stat) == before + 1
    assert envoy_stat(mesh, "a", "web-1", "cluster.backend.upstream_rq_total") == via_service
    # The tests share the mesh and may run alone or in any order (-k, a rerun): leave web-1 as the fixture made it.
    doc.write_text(dataplane("web-1", A_IP, 9090, "web"))
    h.run("a", PY, "-m", "dpagent", "apply", "-f", str(doc), "--api-address", mesh["api"])
    wait_for(lambda: "direct_access" not in h.run("a", "curl", "-s", "--unix-socket",
                                                   str(mesh["root"] / "web-1" / "work" / "envoy-admin.sock"),
                                                   "http://admin/listeners").stdout, 20, interval=0.3,
             what="the direct-access listener gone again")


def test_agent_traffic_excluded_ports_and_ssh_are_not_redirected(mesh):
    passthrough = "cluster.outbound_passthrough.upstream_cx_total"  # Envoy writes ":" in stat names as "_"
    base = envoy_stat(mesh, "a", "web-1", passthrough)
    assert client(mesh, "tcp", f"{B_IP}:22", uid=AGENT_UID)["data"] == "port-22"
    assert client(mesh, "tcp", f"{B_IP}:2222")["data"] == "port-2222"  # --exclude-outbound-ports 2222
    assert envoy_stat(mesh, "a", "web-1", passthrough) == base, "agent UID and excluded ports bypass Envoy"
    assert client(mesh, "tcp", f"{B_IP}:22")["data"] == "port-22", "port 22 stays reachable on B"
    assert envoy_stat(mesh, "a", "web-1", passthrough) == base + 1, "the app's own non-mesh traffic is proxied"


def test_names_keep_resolving_and_traffic_keeps_flowing_while_the_cp_is_away(mesh):
    h = mesh["hosts"]
    h.cp.terminate()
    h.cp.wait(15)
    try:
        r = client(mesh, "http", "http://backend.mesh/cp-away")
        assert r["status"] == 200 and "URI=spiffe://default/web" in r["body"]["xfcc"]
    finally:  # the tests share the mesh, in any order: bring the CP back, and both proxies onto it
        start_cp(h, mesh["data"])
        for name in ("web-1", "backend-1"):
            wait_for(lambda name=name: connected(mesh, name), 30, interval=0.3, what=f"{name} back on the CP")


def test_uninstall_restores_the_exact_previous_rules(mesh):
    h = mesh["hosts"]
    for host in ("a", "b"):
        h.run(host, PY, "-m", "transparent_proxy.cli", "uninstall", "--iptables-variant", h.variant)
        try:
            assert h.iptables_save(host) == mesh["before"][host]
        finally:
            install(h, host)  # the tests share the mesh, in any order
