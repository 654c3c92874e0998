"""What the e2e mesh modules share: Dataplane YAML, tiny apps, policy PUT/DELETE, waits on the mesh, a fixed-rate
client. A helper module, not a test module: importing it collects nothing and starts nothing.

Every e2e module builds the same kind of mesh (a CP, agents on loopback, `web` calling services through its
outbounds), so the pieces live here once and a fix to one (a flaky wait, a YAML field) reaches every module.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from testlib import HttpApp, TcpApp, wait_for

from dpagent.controlplane.policies.registry import POLICY_KINDS

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


# ---- Dataplane YAML ----------------------------------------------------------------------------------------------

def dataplane(name: str, service: str, port: int, service_port: int, protocol: str = "http", outbound: str = "",
              *, tags: Mapping[str, str] | None = None) -> str:
    """A Dataplane of the e2e meshes: one inbound on 127.0.0.1 with `tags` beside its service and protocol,
    labelled `app: <service>` (for Dataplane-label targetRefs), plus `outbound:` YAML from `outbound()`."""
    extra = "".join(f"      {k}: {v}\n" for k, v in (tags or {}).items())
    return f"""\
type: Dataplane
mesh: default
name: {name}
labels:
  app: {service}
networking:
  address: 127.0.0.1
  inbound:
  - port: {port}
    servicePort: {service_port}
    tags:
      kuma.io/service: {service}
      kuma.io/protocol: {protocol}
{extra}{outbound}"""


def outbound(**services: int) -> str:
    """The `outbound:` block of a Dataplane (indented two spaces): one entry per `service=port`, in order."""
    entries = "".join(f"  - port: {port}\n    tags:\n      kuma.io/service: {service}\n"
                      for service, port in services.items())
    return f"  outbound:\n{entries}"


def deny_web(target: str = "backend") -> str:
    """A MeshTrafficPermission `deny-web` that denies service web calling `target`."""
    return f"""\
type: MeshTrafficPermission
mesh: default
name: deny-web
spec:
  targetRef: {{kind: MeshService, name: {target}}}
  from:
  - targetRef: {{kind: MeshService, name: web}}
    default: {{action: Deny}}
"""


def url(port: int, path: str = "/") -> str:
    return f"http://127.0.0.1:{port}{path}"


# ---- tiny apps ---------------------------------------------------------------------------------------------------

class VersionApp(HttpApp):
    """Answers every GET with JSON: its version, the path it received and the request headers."""

    def __init__(self, version: str) -> None:
        def answer(path: str, headers: dict[str, str]) -> tuple[bytes, str]:
            return json.dumps({"version": version, "path": path, "headers": headers}).encode(), "application/json"

        # headers and body go out in two writes: with Nagle on, a 40 ms delayed-ACK stall each
        super().__init__(version, answer, nodelay=True)


class NameApp(TcpApp):
    """A TCP server that answers the first bytes of each connection with its name, then closes."""

    backlog = 64
    threaded = False

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if conn.recv(100):
                    conn.sendall(self.name)
            except OSError:
                pass


def tcp_call(port: int, payload: bytes = b"who") -> bytes:
    """One TCP exchange through an outbound: the first answer, or b"" when a proxy closed the connection
    instead (a refused, reset or timed-out exchange counts as closed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(payload)
            return s.recv(100)
    except OSError:
        return b""


# ---- the mesh and its policies -----------------------------------------------------------------------------------

def start_dataplanes(agents: Any, dataplanes: Mapping[str, str], timeout: float = 40) -> list[Any]:
    """Start one agent per `name: yaml` at once, then wait for all: Envoys boot in parallel."""
    started = [agents(name, yaml, wait=False) for name, yaml in dataplanes.items()]
    for a in started:
        a.wait_ready(timeout)
    return started


def wait_instances(target: str, instances: Iterable[str], tries: int = 10, timeout: float = 30,
                   what: str = "web -> every backend instance through the mesh") -> None:
    """Until `tries` GETs of `target` together reach exactly `instances` (BackendApp's `x-instance`)."""
    expected = set(instances)
    with httpx.Client(timeout=3) as c:
        wait_for(lambda: {c.get(target).headers.get("x-instance") for _ in range(tries)} == expected, timeout,
                 what=what)


def policy_to(kind: str, name: str, conf: dict[str, Any], service: str = "backend",
              target: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `to` policy in Kuma's shape: `conf` for calls to `service` from `target` (the whole mesh by default)."""
    return {"type": kind, "mesh": "default", "name": name, "spec": {
        "targetRef": target or {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": service}, "default": conf}]}}


def put(cp: Any, doc: dict[str, Any]) -> None:
    """PUT a policy document at its kind's REST path (the plural comes from the plugin registry)."""
    plural = POLICY_KINDS[doc["type"]].plural
    r = httpx.put(f"{cp.api}/meshes/default/{plural}/{doc['name']}", json=doc, timeout=5)
    assert r.status_code in (200, 201), r.text


def delete(cp: Any, kind: str, name: str) -> None:
    """DELETE a policy by kind (or plural); one already gone is fine (tests clean up after themselves and after
    failures)."""
    plural = POLICY_KINDS[kind].plural if kind in POLICY_KINDS else kind
    assert httpx.delete(f"{cp.api}/meshes/default/{plural}/{name}", timeout=5).status_code in (200, 204, 404)


def xds_status(cp: Any, dataplane: str, type_url: str = CLUSTER) -> dict[str, Any]:
    """The CP's view of one xDS type of a dataplane's stream: snapshot_version, acked_version, ..."""
    return (cp.inspect(dataplane).get("xds") or {}).get("types", {}).get(type_url, {})


def snapshot_versions(cp: Any, dataplanes: Iterable[str], type_url: str = CLUSTER) -> dict[str, Any]:
    return {d: xds_status(cp, d, type_url).get("snapshot_version") for d in dataplanes}


def wait_acked(cp: Any, before: Mapping[str, Any], what: str, type_url: str = CLUSTER) -> None:
    """Until each dataplane in `before` has a newer snapshot than it had then and its Envoy ACKed it: a policy
    is in force from that moment, so a test needs no fixed sleep."""
    for d, version in before.items():
        def acked(d: str = d, version: Any = version) -> bool:
            s = xds_status(cp, d, type_url)
            return s.get("snapshot_version") != version and s.get("acked_version") == s.get("snapshot_version")

        wait_for(acked, 15, what=f"{d}'s Envoy ACKing {what}")


def put_acked(cp: Any, doc: dict[str, Any], what: str, dataplanes: Iterable[str] = ("web-1",)) -> None:
    """PUT a policy and wait until `dataplanes` have ACKed the cluster update it causes."""
    before = snapshot_versions(cp, dataplanes)
    put(cp, doc)
    wait_acked(cp, before, what)


class Load:
    """A client at a fixed rate on its own clock (not paced by the answers), recording (time, status, `header`)
    of every request; a request that failed at the socket is (time, 0, "") with its error in `errors`."""

    def __init__(self, target: str, rate: float = 50.0, header: str = "x-instance") -> None:
        self.seen: list[tuple[float, int, str]] = []
        self.errors: list[str] = []
        self._target, self._rate, self._header = target, rate, header
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=3) as c:
            start, i = time.monotonic(), 0
            while not self._stop.is_set():
                i += 1
                try:
                    r = c.get(self._target)
                    self.seen.append((time.monotonic(), r.status_code, r.headers.get(self._header, "")))
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))
                    self.seen.append((time.monotonic(), 0, ""))
                time.sleep(max(0.0, start + i / self._rate - time.monotonic()))

    def served_by(self, value: str, after: float) -> list[float]:
        """Times of the successful requests after `after` whose `header` was `value`."""
        return [t for t, s, v in self.seen if t > after and v == value and s == 200]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def rotation_mesh(enabled: str, extra_backend: str = "", lifetime: str = "30s") -> str:
    """A Mesh with the builtin backend `ca-1` issuing leaves of `lifetime` (30 s is the shortest Kuma allows: they
    renew at ~24 s, so a CA switch completes in ~25 s), `enabled` the active backend, `extra_backend` YAML list
    items appended to `backends`."""
    return f"""\
type: Mesh
name: default
mtls:
  enabledBackend: {enabled}
  backends:
  - name: ca-1
    type: builtin
    dpCert: {{rotation: {{expiration: {lifetime}}}}}
{extra_backend}"""
