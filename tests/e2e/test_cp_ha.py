"""Three CP replicas on one PostgreSQL serving two dataplanes with real Envoys, as an HA zone would run them:

- started at the same instant on an empty database, they make one CP CA, one admin token, one signing key and
  one mesh CA, and elect one leader;
- `kill -9` of the leader holding both proxies' streams: fixed-rate traffic between the dataplanes sees no failed
  request, the Envoys reconnect to the survivors, a new leader is elected within 15 s, and a
  MeshTrafficPermission applied through a surviving replica is ACKed by both proxies within 2 s;
- a proxy whose agent drains through replica A is withdrawn at once from a client connected to replica B.

The replicas listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 with the same ports, as replicas on three hosts would;
the agents get all three in `--cp-address`.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pgserver
import psutil
import pytest
from e2e.meshlib import Load, dataplane, outbound, url
from pgserver import PgServer
from testlib import PY, HttpApp, clean_env, free_port, terminate, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PORTS = {k: free_port() for k in ("dp", "xds", "b_in", "w_in", "w_out_b")}


class Replica:
    def __init__(self, index: int, data_dir: Path, env: dict[str, str]) -> None:
        self.ip = f"127.0.0.{index + 1}"
        self.data_dir, self.env = data_dir, env
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log = data_dir.parent / f"cp-{index}.log"
        self.proc: subprocess.Popen[str] | None = None

    def spawn(self) -> None:
        logf = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [PY, "-m", "dpagent", "cp", "run", "--data-dir", str(self.data_dir), "--bind-address", self.ip,
             "--hostname", self.ip, "--dp-server-port", str(PORTS["dp"]), "--xds-port", str(PORTS["xds"]),
             "--api-port", str(self.api_port), "--token-recheck-interval", "1s", "--deregistration-delay", "1s"],
            stdout=logf, stderr=subprocess.STDOUT, text=True, env={**clean_env(), **self.env})

    def wait_up(self) -> None:
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 30, what=f"replica {self.ip} API")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.api}/status/control-plane", timeout=3).json()

    def holds(self, name: str) -> bool:
        r = httpx.get(f"{self.api}/meshes/default/dataplanes/{name}/_inspect", timeout=3)
        return r.status_code == 200 and bool((r.json().get("xds") or {}).get("connected"))

    def acked_config(self, name: str) -> tuple[str, ...] | None:
        """The proxy's config versions (every xDS type its Envoy asked for), once it has ACKed all of them."""
        types = httpx.get(f"{self.api}/meshes/default/dataplanes/{name}/_inspect", timeout=3).json()["xds"]["types"]
        types = {t: s for t, s in types.items() if s.get("acked_version")}  # e.g. no EDS without outbounds
        if not types or any(s["acked_version"] != s.get("snapshot_version") for s in types.values()):
            return None
        return tuple(s["acked_version"] for _, s in sorted(types.items()))

    def cli(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run([PY, "-m", "dpagent", *args, "--api-address", self.api], input=input,
                             capture_output=True, text=True, env=clean_env(), timeout=60)
        assert out.returncode == 0, f"dpagent {' '.join(args)}: {out.stderr}"
        return out.stdout


class Zone:
    """What the shared e2e `agents` fixture needs of a control plane, served by whichever replicas are alive."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.url = ",".join(f"https://{r.ip}:{PORTS['dp']}" for r in replicas)
        self.ca_file = replicas[0].data_dir / "ca.pem"

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive()]

    def token(self, name: str) -> str:
        return self.live()[0].cli("token", "generate", "--name", name, "--mesh", "default", "--valid-for",
                                  "1h").strip()

    def leader(self) -> Replica | None:
        leaders = [r for r in self.live() if r.status()["leader"]]
        assert len(leaders) <= 1, f"two leaders at once: {[r.ip for r in leaders]}"
        return leaders[0] if leaders else None

    def holder(self, name: str) -> Replica | None:
        return next((r for r in self.live() if r.holds(name)), None)


@pytest.fixture(scope="module")
def database(pg_server: PgServer) -> str:
    name = asyncio.run(pg_server.create_database())
    env = {**clean_env(), **pgserver.store_env(pg_server, name)}
    out = subprocess.run([PY, "-m", "dpagent", "cp", "migrate", "up"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return name


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer, database: str) -> Iterator[Zone]:
    """Three replicas started at the same instant on the empty (migrated) database."""
    env = pgserver.store_env(pg_server, database)
    replicas = [Replica(i, tmp_path_factory.mktemp(f"cp-{i}") / "data", env) for i in range(3)]
    for r in replicas:
        r.spawn()
    try:
        for r in replicas:
            r.wait_up()
        yield Zone(replicas)
    finally:
        for r in replicas:
            terminate(r.proc)


def stored_rows(pg_server: PgServer, database: str, *kinds: str) -> list[Any]:
    async def query() -> list[Any]:
        conn = await asyncpg.connect(**pg_server.connect_kwargs(database))  # type: ignore[arg-type]
        try:
            return await conn.fetch("SELECT kind, mesh, name FROM resources WHERE kind = ANY($1::text[])", kinds)
        finally:
            await conn.close()

    return asyncio.run(query())


def stored_counts(pg_server: PgServer, database: str) -> dict[str, int]:
    names = [r["name"] for r in stored_rows(pg_server, database, "Secret", "GlobalSecret")]
    return {"signing keys": sum(n.startswith("dataplane-token-signing-key-default-") for n in names),
            "mesh CA keys": sum(n.startswith("default.ca-builtin-key-") for n in names),
            "mesh CA certs": sum(n.startswith("default.ca-builtin-cert-") for n in names),
            "CP CAs": names.count("cp-tls-ca"), "admin tokens": names.count("cp-admin-token")}


def test_replicas_started_together_make_one_of_everything_and_one_leader(cp: Zone, pg_server: PgServer,
                                                                          database: str) -> None:
    assert stored_counts(pg_server, database) == {"signing keys": 1, "mesh CA keys": 1, "mesh CA certs": 1,
                                                  "CP CAs": 1, "admin tokens": 1}
    assert len({(r.data_dir / "ca.pem").read_text() for r in cp.replicas}) == 1, "every replica serves one CA"
    assert len({(r.data_dir / "admin-token").read_text() for r in cp.replicas}) == 1, "one admin token"
    leader = wait_for(cp.leader, 15, what="a leader")
    assert {r.status()["leaderInstance"] for r in cp.replicas} == {leader.status()["instanceId"]}
    metrics = {r.ip: httpx.get(f"{r.api}/metrics", timeout=3).text for r in cp.replicas}
    assert sum(f"dpagent_cp_leader{{instance=\"{r.status()['instanceId']}\"}} 1" in metrics[r.ip]
               for r in cp.replicas) == 1
    assert "this replica" in leader.cli("cp", "status")
    follower = next(r for r in cp.replicas if r is not leader)
    assert f"leader:   {leader.status()['instanceId']}" in follower.cli("cp", "status")
    gui = httpx.get(f"{follower.api}/gui/api/overview", timeout=5).json()["cp"]  # loopback: no login needed
    assert gui["leader"] == leader.status()["instanceId"] and gui["store"] == "postgres"


def test_killing_the_leader_loses_no_request_and_a_survivor_takes_over(cp: Zone, agents: Any) -> None:
    leader = wait_for(cp.leader, 15, what="a leader")
    others = [r for r in cp.replicas if r is not leader]
    # Both proxies' streams on the leader: the others are down while the agents start, and back afterwards.
    for r in others:
        terminate(r.proc)
    backend = HttpApp("backend")
    agents("backend-1", dataplane("backend-1", "backend", PORTS["b_in"], backend.port))
    agents("web-1", dataplane("web-1", "web", PORTS["w_in"], 1, outbound=outbound(backend=PORTS["w_out_b"])))
    target = url(PORTS["w_out_b"], "/hello")
    wait_for(lambda: httpx.get(target, timeout=2).status_code == 200, 20, what="web -> backend over mTLS")
    for r in others:
        r.spawn()
    for r in others:
        r.wait_up()
    assert leader.holds("web-1") and leader.holds("backend-1") and cp.leader() is leader

    load = Load(target, rate=50)
    try:
        time.sleep(1)
        assert leader.proc is not None
        leader.proc.kill()  # kill -9
        killed = time.monotonic()
        leader.proc.wait()
        new = wait_for(cp.leader, 15, interval=0.1, what="a new leader among the survivors")
        elected = time.monotonic() - killed
        holders = {n: wait_for(lambda n=n: cp.holder(n), 15, interval=0.1, what=f"{n} reconnected to a survivor")
                   for n in ("web-1", "backend-1")}
        time.sleep(max(0.0, killed + 3 - time.monotonic()))  # traffic keeps flowing while the fleet moves over
        before = {n: wait_for(lambda n=n, r=r: r.acked_config(n), 10, what=f"{n} in sync")
                  for n, r in holders.items()}
        via = next(r for r in others if r is not new)  # through the replica that does not lead, to show any will do
        applied = time.monotonic()
        via.cli("apply", "-f", "-", input=DENY_WEB_EVERYWHERE)

        def both_acked() -> bool:
            return all((v := holders[n].acked_config(n)) and v != before[n] for n in holders)

        wait_for(both_acked, 10, interval=0.05, what="both proxies ACK the new MeshTrafficPermission")
        acked = time.monotonic() - applied
        wait_for(lambda: any(s == 403 for t, s, _ in load.seen if t > applied), 5, what="web -> backend denied")
    finally:
        load.stop()
    during = [(t, s) for t, s, _ in load.seen if t < applied]
    failed = [(round(t - killed, 2), s) for t, s in during if s != 200]
    print(f"requests before the change: {len(during)}, failed: {len(failed)}; new leader after {elected:.1f}s; "
          f"policy ACKed by both proxies {acked:.2f}s after the apply")
    assert len(during) > 40 and not failed, f"failed around the leader's death: {failed[:10]} {load.errors[:3]}"
    assert elected < 15
    assert acked < 2, f"the policy took {acked:.2f}s to reach both proxies"
    via.cli("delete", "mtp", "deny-web-everywhere")
    wait_for(lambda: httpx.get(target, timeout=2).status_code == 200, 10, what="allowed again")


def test_a_proxy_draining_through_one_replica_is_withdrawn_by_another(cp: Zone, agents: Any, pg_server: PgServer,
                                                                     database: str) -> None:
    """The drain is stored, not kept by the replica that heard it: backend-2's agent knows only replica A, the
    client's Envoy is on replica B, and B stops sending it new requests as soon as the agent starts draining."""
    b = wait_for(lambda: cp.holder("web-1"), 10, what="web-1 connected")
    a = next(r for r in cp.live() if r is not b)
    pool = HttpApp("backend-2")
    drained = agents("backend-2", dataplane("backend-2", "backend", free_port(), pool.port), None,
                     "--cp-address", f"https://{a.ip}:{PORTS['dp']}", "--drain-time", "15s")
    assert a.holds("backend-2") and not a.holds("web-1")
    target = url(PORTS["w_out_b"], "/")

    def answers(n: int = 20) -> set[str]:
        return {httpx.get(target, timeout=3).text.split()[0] for _ in range(n)}

    wait_for(lambda: answers() == {"backend", "backend-2"}, 20, what="both backends serving web-1")
    drained.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    wait_for(lambda: answers(6) == {"backend"}, 5, interval=0.05, what="replica B withdrew the draining backend-2")
    withdrawn = time.monotonic() - t0
    assert drained.proc.poll() is None, "backend-2 is still up, draining, while traffic has moved off it"
    print(f"backend-2 withdrawn by the other replica {withdrawn:.2f}s after its drain began")
    assert withdrawn < 3
    # The CA-rotation gate's per-replica records: the replicas serving these proxies publish theirs.
    published = {r["name"] for r in stored_rows(pg_server, database, "ReplicaBundleAck")}
    assert {a.status()["instanceId"], b.status()["instanceId"]} <= published


DENY_WEB_EVERYWHERE = """\
type: MeshTrafficPermission
mesh: default
name: deny-web-everywhere
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""



def test_a_database_crash_leaves_traffic_alone_and_the_replicas_recover(cp: Zone, pg_server: PgServer) -> None:
    """`kill -9` of every PostgreSQL process for 10 s: the Envoys keep their config and traffic flows, every replica
    reports the store unavailable and no leader is left, and when the database is back (crash recovery) the
    replicas recover by themselves: the write acknowledged before the crash is there and a new policy applies."""
    target = url(PORTS["w_out_b"], "/hello")
    wait_for(lambda: httpx.get(target, timeout=2).status_code == 200, 10, what="web -> backend")
    live = cp.live()
    live[0].cli("apply", "-f", "-", input=ACKNOWLEDGED)
    load = Load(target, rate=50)
    try:
        time.sleep(0.5)
        postmaster = next(p for p in psutil.process_iter(["cmdline"])
                          if str(pg_server.data) in " ".join(p.info["cmdline"] or []))
        victims = [postmaster, *postmaster.children(recursive=True)]
        for p in victims:
            p.kill()
        crashed = time.monotonic()
        psutil.wait_procs(victims, timeout=10)
        wait_for(lambda: not any(r.status()["storeAvailable"] for r in live), 15, interval=0.2,
                 what="every replica reports the store unavailable")
        wait_for(lambda: cp.leader() is None, 10, interval=0.2, what="the leader steps down")
        assert "UNREACHABLE" in live[-1].cli("cp", "status")
        time.sleep(max(0.0, crashed + 10 - time.monotonic()))
        pg_server.start_server()
        back = time.monotonic()
        wait_for(lambda: all(r.status()["storeAvailable"] for r in live) and cp.leader() is not None, 30,
                 interval=0.2, what="the replicas back on the database with a leader")
        recovered = time.monotonic() - back
        outage = [(t, s) for t, s, _ in load.seen if crashed <= t]
        assert "acknowledged-before-crash" in live[-1].cli("get", "meshtrafficpermissions")
        live[-1].cli("apply", "-f", "-", input=DENY_WEB_EVERYWHERE)
        wait_for(lambda: httpx.get(target, timeout=2).status_code == 403, 15, interval=0.1,
                 what="a policy applied after the outage reaches the proxies")
    finally:
        load.stop()
        if not (pg_server.data / "postmaster.pid").exists() or not _pg_up(pg_server):
            pg_server.start_server()
    failed = [s for _, s in outage if s != 200]
    print(f"database down 10 s: {len(outage)} requests, {len(failed)} failed; replicas recovered "
          f"{recovered:.1f}s after it was back")
    assert len(outage) > 40 and not failed, f"requests failed while the database was down: {load.errors[:3]}"
    live[-1].cli("delete", "mtp", "deny-web-everywhere")


def _pg_up(server: PgServer) -> bool:
    return any(str(server.data) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


ACKNOWLEDGED = """\
type: MeshTrafficPermission
mesh: default
name: acknowledged-before-crash
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: nobody}
    default: {action: Allow}
"""
