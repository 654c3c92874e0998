"""Real Envoy: the generated dynconf listener binds its RELATIVE Unix socket path inside Envoy's cwd (the agent's
work dir) and serves the DNS table with an ETag, answering 304 while the agent's copy is current."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _xds_testlib import envoy_binary, resources_to_plain

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.dns import dns_table
from dpagent.controlplane.xds.generators.dynconf import dynconf_listener, etag
from dpagent.controlplane.xds.proxy import LISTENER

pytestmark = pytest.mark.envoy


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short on purpose: the test's client connects by absolute path, which must fit sun_path (108 bytes).
    path = Path(tempfile.mkdtemp(prefix="dyn", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_dns_over_the_dynconf_socket(workdir: Path) -> None:
    body = dns_table({"backend": "240.0.0.1", "a_b_svc_80": "240.0.0.2"}, ["backend", "a_b_svc_80"])
    listener = dynconf_listener({names.DYNCONF_DNS_PATH: body})
    assert listener.address.pipe.path == names.DYNCONF_SOCKET  # relative: the same bytes for every proxy
    plain = resources_to_plain({LISTENER: {listener.name: listener}})
    config = {"node": {"id": "default.test", "cluster": "test"},
              "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
              "staticResources": {"listeners": list(plain["Listener"].values())}}
    (workdir / "envoy.json").write_text(json.dumps(config))
    log = (workdir / "envoy.log").open("w")
    proc = subprocess.Popen([envoy_binary(), "-c", "envoy.json", "--disable-hot-restart", "--log-level", "info"],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    sock = workdir / names.DYNCONF_SOCKET
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert sock.exists(), (workdir / "envoy.log").read_text()[-3000:]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as client:
            first = client.get("http://localhost/dns")
            assert first.status_code == 200
            assert first.headers["etag"] == etag(body) == first.headers["etag"].lower()
            assert first.headers["content-type"] == "application/json"
            assert first.content == body
            assert first.json() == {"records": [{"name": "a.b.svc.80.mesh", "ips": ["240.0.0.2"]},
                                                {"name": "a_b_svc_80.mesh", "ips": ["240.0.0.2"]},
                                                {"name": "backend.mesh", "ips": ["240.0.0.1"]}], "ttl": 30}
            again = client.get("http://localhost/dns", headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            stale = client.get("http://localhost/dns", headers={"If-None-Match": "0" * 64})
            assert stale.status_code == 200 and stale.content == body
            assert client.get("http://localhost/meshmetric").status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
