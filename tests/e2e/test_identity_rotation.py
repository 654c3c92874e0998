"""Identity lifecycle under load: rotation without restarts or failed requests, a CA switch, a CP outage."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.meshlib import rotation_mesh
from testlib import free_port, wait_for

from dpagent import pki
from dpagent.controlplane.ca import generate_root_ca

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

LIFETIME = "30s"


def dataplane(name: str, service: str, port: int, app: int, outbound: str = "") -> str:
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {port}\n    servicePort: {app}\n    tags: {{kuma.io/service: {service}, "
            f"kuma.io/protocol: http}}\n{outbound}")


class Load:
    """Steady requests through the mesh; every non-200 or error is a failure."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failures = url, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def served_serial(work_dir: Path) -> str:
    """The serial of the certificate Envoy itself is using, from its admin /certs."""
    transport = httpx.HTTPTransport(uds=str(work_dir / "envoy-admin.sock"))
    with httpx.Client(transport=transport, base_url="http://admin", timeout=3) as c:
        certs = c.get("/certs").json()["certificates"]
    serials = {ch["serial_number"] for entry in certs for ch in entry.get("cert_chain") or []}
    assert len(serials) == 1, serials
    return serials.pop()


def trusted_serials(work_dir: Path) -> set[str]:
    """Serials of the roots Envoy trusts right now (the mesh_ca bundle it received over ADS)."""
    transport = httpx.HTTPTransport(uds=str(work_dir / "envoy-admin.sock"))
    with httpx.Client(transport=transport, base_url="http://admin", timeout=3) as c:
        certs = c.get("/certs").json()["certificates"]
    return {ca["serial_number"] for entry in certs for ca in entry.get("ca_cert") or []}


def chains_to(work_dir: Path, root_pem: str) -> bool:
    """Both test CAs have the same subject, so check the signature chain, not names."""
    try:
        pki.verify_chain((work_dir / "identity" / "current" / "cert.pem").read_bytes(), root_pem.encode())
    except pki.PkiError:
        return False
    return True


@pytest.fixture(scope="module")
def rot(cp, agents, apps, tmp_path_factory) -> Iterator[dict[str, Any]]:
    cp.cli("apply", "-f", "-", input=rotation_mesh("ca-1"))
    tmp = tmp_path_factory.mktemp("rot")
    out = free_port()
    wds = {"backend": tmp / "wd-backend", "web": tmp / "wd-web"}
    b = agents("rot-backend", dataplane("rot-backend", "rot-backend", free_port(), apps["backend"].port), None,
               "--work-dir", str(wds["backend"]))
    w = agents("rot-web", dataplane("rot-web", "rot-web", free_port(), 1,
                                    f"  outbound:\n  - port: {out}\n    tags: {{kuma.io/service: rot-backend}}\n"),
               None, "--work-dir", str(wds["web"]))
    url = f"http://127.0.0.1:{out}/rot"
    wait_for(lambda: httpx.get(url, timeout=3).status_code == 200, 20, what="rot-web -> rot-backend")
    yield {"url": url, "wds": wds, "agents": {"backend": b, "web": w}}


def test_three_rotations_under_load_without_restart_or_failure(rot, cp):
    pids = {k: a.envoy_pids() for k, a in rot["agents"].items()}
    serials: dict[str, list[str]] = {k: [served_serial(wd)] for k, wd in rot["wds"].items()}
    with Load(rot["url"]) as load:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and min(len(set(v)) for v in serials.values()) < 4:
            time.sleep(1)
            for k, wd in rot["wds"].items():
                serials[k].append(served_serial(wd))
    assert load.failures == [], load.failures[:5]
    assert load.ok > 500
    for k, seen in serials.items():
        assert len(set(seen)) >= 4, f"{k}: expected 3 rotations, saw serials {list(dict.fromkeys(seen))}"
    assert {k: a.envoy_pids() for k, a in rot["agents"].items()} == pids, "Envoy must not restart on rotation"
    info = cp.inspect("rot-web")["certificate"]
    assert info["regenerations"] >= 4 and info["backend"] == "ca-1"


def test_ca_switch_under_load(rot, cp, tmp_path):
    cert, key = generate_root_ca("default", "ca-2")
    (tmp_path / "ca2.pem").write_text(cert)
    # The certificate from a file on the CP host, the key from a Secret (sealed in the store): both data sources.
    cp.cli("apply", "-f", "-", input="type: Secret\nmesh: default\nname: ca-2-key\ndata: "
           + base64.b64encode(key.encode()).decode() + "\n")
    provided = (f"  - name: ca-2\n    type: provided\n    dpCert: {{rotation: {{expiration: {LIFETIME}}}}}\n"
                f"    conf:\n      cert: {{file: {tmp_path / 'ca2.pem'}}}\n"
                f"      key: {{secret: ca-2-key}}\n")
    with Load(rot["url"]) as load:
        cp.cli("apply", "-f", "-", input=rotation_mesh("ca-1", provided))  # add the backend first (bundle unchanged)
        time.sleep(2)
        cp.cli("apply", "-f", "-", input=rotation_mesh("ca-2", provided))  # then switch
        wait_for(lambda: all(chains_to(wd, cert) for wd in rot["wds"].values()), 90, interval=0.5,
                 what="every leaf issued by ca-2")
        assert cp.cli("get", "dataplanes").stdout.count("ca-2") >= 2, "insights show the issuing backend"
        time.sleep(3)
    assert load.failures == [], load.failures[:5]
    assert all(chains_to(wd, cert) for wd in rot["wds"].values())
    ca2_serial = pki.cert_info(cert).serial_hex.lower().lstrip("0")
    # ca-1 leaves the bundle once no unexpired leaf it signed is left anywhere
    cp_ca = pki.cert_info(cp.ca_file.read_bytes()).serial_hex.lower().lstrip("0")  # ads_cluster trusts it too
    wait_for(lambda: all({s.lower().lstrip("0") for s in trusted_serials(wd)} - {cp_ca} == {ca2_serial}
                         for wd in rot["wds"].values()), 15, interval=0.5, what="ca-1 retired from every bundle")
    counts = httpx.get(f"{cp.api}/meshes/default/certificates", timeout=5).json()
    assert counts["byBackend"].get("ca-2", 0) >= 2


def test_cp_down_across_renewal_keeps_traffic_then_renews(rot, cp):
    before = cp.inspect("rot-web")["certificate"]["regenerations"]
    wait_for(lambda: cp.inspect("rot-web")["certificate"]["regenerations"] > before, 40, interval=0.2,
             what="a fresh renewal to time the outage against")
    renewed_at = time.monotonic()
    serial_before = served_serial(rot["wds"]["web"])
    with Load(rot["url"]) as load:
        cp.stop()
        try:
            # The next renewal falls due at ~24 s (80 % of 30 s); the CP is away from ~1 s until ~25 s after it.
            time.sleep(max(0.0, renewed_at + 25 - time.monotonic()))
            assert served_serial(rot["wds"]["web"]) == serial_before, "nothing to renew from while the CP is down"
        finally:
            cp.start()  # the module's other tests need it, whatever happened here
        wait_for(lambda: served_serial(rot["wds"]["web"]) != serial_before, 15, interval=0.2,
                 what="renewal after the CP came back")
    assert time.monotonic() - renewed_at < 30, "renewed before the old certificate expired"
    assert load.failures == [], load.failures[:5]
