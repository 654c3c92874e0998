"""A change regenerates only the proxies it can reach, and what they get is what a full rebuild would give.

Random sequences of store changes (policies of every kind with every targetRef kind, dataplanes added, moved,
retagged, made unready, drained, removed) are applied to one XdsSync incrementally. After each step every proxy's
snapshot from the incremental state must equal the snapshot from a fresh full rebuild, and every proxy whose
snapshot changed must be inside the reach the change reported. A missed dependency fails here, not in production.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds.sync import XdsSync, proxy_snapshot

MESH = "default"
SERVICES = ("web", "api", "db", "cache")


def dataplane(name: str, service: str, i: int, *, version: str = "v1", ready: bool = True,
              outbounds: tuple[str, ...] = (), tproxy: bool = False, reachable: tuple[str, ...] = (),
              protocol: str = "http", direct: tuple[str, ...] = (),
              backends: tuple[dict[str, str], ...] = ()) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": 8000 + i, "servicePort": 9000 + i,
                               "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol,
                                        "version": version, "kuma.io/zone": "z1" if i % 2 else "z2"}}
    if not ready:
        inbound["health"] = {"ready": False}
    net: dict[str, Any] = {"address": f"10.0.0.{i}", "inbound": [inbound]}
    if tproxy:
        net["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001,
                                      **({"reachableServices": list(reachable)} if reachable else {}),
                                      **({"directAccessServices": list(direct)} if direct else {}),
                                      **({"reachableBackends": {"refs": list(backends)}} if backends else {})}
    else:
        net["outbound"] = [{"port": 20000 + k, "tags": {"kuma.io/service": s}} for k, s in enumerate(outbounds)]
        if i % 3 == 0:  # some classic proxies call an external service through an outbound
            net["outbound"].append({"port": 21000, "backendRef": {"kind": "MeshExternalService", "name": f"p{i % 12}"}})
    return {"type": "Dataplane", "mesh": MESH, "name": name, "labels": {"app": service}, "networking": net}


def top_ref(rng: random.Random, names: list[str]) -> dict[str, Any]:
    return rng.choice([
        {"kind": "Mesh"},
        {"kind": "MeshService", "name": rng.choice(SERVICES)},
        {"kind": "MeshSubset", "tags": {"version": rng.choice(["v1", "v2"])}},
        {"kind": "MeshServiceSubset", "name": rng.choice(SERVICES), "tags": {"version": "v2"}},
        {"kind": "Dataplane", "name": rng.choice(names)} if names else {"kind": "Mesh"},
        {"kind": "Dataplane", "labels": {"app": rng.choice(SERVICES)}},
    ])


def to_ref(rng: random.Random, external: bool = False) -> dict[str, Any]:
    """`external`: the kind accepts MeshExternalService refs (named like the random resources, p1..p12)."""
    refs = [{"kind": "Mesh"}, {"kind": "MeshService", "name": rng.choice(SERVICES)},
            {"kind": "MeshService", "name": rng.choice(SERVICES)}]
    if external:
        refs.append({"kind": "MeshExternalService", "name": f"p{rng.randint(1, 12)}"})
    return rng.choice(refs)


def from_ref(rng: random.Random) -> dict[str, Any]:
    return rng.choice([{"kind": "Mesh"}, {"kind": "MeshService", "name": rng.choice(SERVICES)},
                       {"kind": "MeshSubset", "tags": {"version": "v2"}}])


# The kinds the random changes draw from (repeats weigh a kind up). test_every_registered_kind_is_drawn keeps it in
# step with the registry, so a new kind cannot skip this test.
DRAWN = ("MeshTrafficPermission", "MeshTimeout", "MeshTimeout", "MeshRetry", "MeshHTTPRoute", "MeshTCPRoute",
         "MeshCircuitBreaker", "MeshLoadBalancingStrategy", "MeshHealthCheck", "MeshFaultInjection",
         "MeshRateLimit", "MeshTrace", "MeshProxyPatch", "MeshTLS", "MeshTLS", "MeshAccessLog", "MeshMetric",
         "MeshPassthrough", "MeshExternalService", "MeshExternalService")


def test_every_registered_kind_is_drawn() -> None:
    from dpagent.controlplane.policies.registry import POLICY_KINDS

    assert set(DRAWN) == set(POLICY_KINDS)


def subset_split(target: str, v1: int) -> list[dict[str, Any]]:
    return [{"kind": "MeshServiceSubset", "name": target, "tags": {"version": "v1"}, "weight": v1},
            {"kind": "MeshServiceSubset", "name": target, "tags": {"version": "v2"}, "weight": 100 - v1}]


def policy(rng: random.Random, names: list[str], name: str) -> dict[str, Any]:
    kind = rng.choice(DRAWN)
    if kind == "MeshExternalService":
        return external_service(rng, name)
    top = top_ref(rng, names)
    if kind in ("MeshTLS", "MeshPassthrough") and top["kind"] in ("MeshService", "MeshServiceSubset"):
        top = {"kind": "MeshSubset", "tags": {"kuma.io/service": top["name"]}}
    if kind in ("MeshFaultInjection", "MeshRateLimit", "MeshTrafficPermission") and top["kind"] == "Mesh" \
            and rng.random() < 0.3:
        top = {"kind": "MeshService", "name": rng.choice(SERVICES)}
    spec: dict[str, Any] = {"targetRef": top}
    if kind == "MeshTrafficPermission":
        spec["from"] = [{"targetRef": from_ref(rng), "default": {"action": rng.choice(["Allow", "Deny"])}}]
    elif kind == "MeshTimeout":
        section = rng.choice(["to", "from"])
        ref = to_ref(rng, external=True) if section == "to" else {"kind": "Mesh"}
        spec[section] = [{"targetRef": ref, "default": {"http": {"requestTimeout": f"{rng.randint(1, 9)}s"}}}]
    elif kind == "MeshRetry":
        spec["to"] = [{"targetRef": to_ref(rng, external=True),
                       "default": {"http": {"numRetries": rng.randint(1, 5)}, "tcp": {"maxConnectAttempt": 2}}}]
    elif kind == "MeshPassthrough":
        spec["default"] = {"passthroughMode": rng.choice(["All", "Matched", "None"]), "appendMatch": [rng.choice([
            {"type": "Domain", "value": "api.example.com", "port": 443, "protocol": "tls"},
            {"type": "CIDR", "value": f"10.{rng.randint(2, 9)}.0.0/16"},
            {"type": "Domain", "value": "example.org", "port": 80, "protocol": "http"}])]}
    elif kind == "MeshHTTPRoute":
        target = rng.choice(SERVICES)
        spec["to"] = [{"targetRef": {"kind": "MeshService", "name": target}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": target, "tags": {"version": "v1"}, "weight": 90},
                {"kind": "MeshServiceSubset", "name": target, "tags": {"version": "v2"}, "weight": 10}]}}]}]
    elif kind == "MeshTCPRoute":
        target = rng.choice(SERVICES)
        spec["to"] = [{"targetRef": {"kind": "MeshService", "name": target},
                       "rules": [{"default": {"backendRefs": subset_split(target, rng.choice([0, 50, 90]))}}]}]
    elif kind == "MeshAccessLog":
        section = rng.choice(["to", "from"])
        ref = to_ref(rng) if section == "to" else {"kind": "Mesh"}
        spec[section] = [{"targetRef": ref, "default": {"backends": [
            {"type": "File", "file": {"path": f"/tmp/access-{rng.randint(1, 3)}.log"}}]}}]
    elif kind == "MeshMetric":
        spec["default"] = {"backends": [{"type": "Prometheus", "prometheus": {"port": 5670 + rng.randint(0, 2)}}]}
    elif kind == "MeshCircuitBreaker":
        spec["to"] = [{"targetRef": to_ref(rng),
                       "default": {"connectionLimits": {"maxConnections": rng.randint(2, 50)}}}]
    elif kind == "MeshLoadBalancingStrategy":
        spec["to"] = [{"targetRef": to_ref(rng), "default": {"loadBalancer": {
            "type": rng.choice(["RoundRobin", "LeastRequest", "Random"])}}}]
    elif kind == "MeshHealthCheck":
        spec["to"] = [{"targetRef": to_ref(rng), "default": {"interval": f"{rng.randint(2, 9)}s", "tcp": {}}}]
    elif kind == "MeshFaultInjection":
        spec["from"] = [{"targetRef": from_ref(rng), "default": {"http": [
            {"abort": {"httpStatus": 503, "percentage": rng.randint(1, 50)}}]}}]
    elif kind == "MeshTLS":
        conf: dict[str, Any] = {"mode": rng.choice(["Strict", "Permissive"])}
        if top["kind"] == "Mesh" and rng.random() < 0.5:  # versions and ciphers: Mesh-wide policies only
            conf["tlsVersion"] = {"min": rng.choice(["TLS12", "TLS13"]), "max": "TLS13"}
        spec[rng.choice(["from", "rules"])] = [{"default": conf}]
        if "from" in spec:
            spec["from"][0]["targetRef"] = {"kind": "Mesh"}
    elif kind == "MeshTrace":
        spec["default"] = {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}],
                           "sampling": {"random": rng.randint(0, 100)}}
    elif kind == "MeshProxyPatch":
        spec["default"] = {"appendModifications": [rng.choice([
            {"cluster": {"operation": "Patch", "match": {"origin": "outbound"},
                         "jsonPatches": [{"op": "replace", "path": "/connectTimeout",
                                          "value": f"{rng.randint(1, 9)}s"}]}},
            {"virtualHost": {"operation": "Patch", "match": {"origin": "inbound"}, "value":
                             f"responseHeadersToAdd: [{{header: {{key: x-p, value: v{rng.randint(1, 9)}}}}}]"}},
            {"cluster": {"operation": "Add", "value": f"name: extra-{rng.randint(1, 3)}\nconnectTimeout: 2s"}}])]}
    else:
        spec["rules"] = [{"default": {"local": {"http": {"requestRate": {"num": rng.randint(1, 99),
                                                                          "interval": "1s"}}}}}]
    return {"type": kind, "mesh": MESH, "name": name, "spec": spec}


def external_service(rng: random.Random, name: str) -> dict[str, Any]:
    """A MeshExternalService: an HTTP one with TLS origination to an IP, or a TCP one to a hostname."""
    if rng.random() < 0.5:
        spec: dict[str, Any] = {"match": {"port": 443, "protocol": "http"},
                                "endpoints": [{"address": f"192.0.2.{rng.randint(1, 9)}", "port": 443}],
                                "tls": {"enabled": True, "verification": {"mode": "SkipAll"}}}
    else:
        spec = {"match": {"port": 5432, "protocol": "tcp"},
                "endpoints": [{"address": f"db{rng.randint(1, 9)}.example.com", "port": 5432}]}
    return {"type": "MeshExternalService", "mesh": MESH, "name": name, "spec": spec}


class World:
    """The store plus what the test knows it holds, and a stream of random changes to it."""

    def __init__(self, store: MemoryStore, rng: random.Random) -> None:
        self.store, self.rng = store, rng
        self.resources = Resources(store)
        self.dps: dict[str, dict[str, Any]] = {}
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.count = 0

    def new_dataplane(self, service: str | None = None) -> dict[str, Any]:
        self.count += 1
        rng = self.rng
        service = service or rng.choice(SERVICES)
        others = tuple(s for s in SERVICES if s != service)
        tproxy = rng.random() < 0.25
        return dataplane(f"{service}-{self.count}", service, self.count, version=rng.choice(["v1", "v2"]),
                         outbounds=tuple(rng.sample(others, rng.randint(0, 2))), tproxy=tproxy,
                         reachable=tuple(rng.sample(others, 1)) if tproxy and rng.random() < 0.5 else (),
                         direct=rng.choice([(), (), ("*",), tuple(rng.sample(others, 1))]) if tproxy else (),
                         backends=rng.choice([(), (), ({"kind": "MeshService", "name": rng.choice(others)},),
                                              ({"kind": "MeshExternalService", "name": f"p{rng.randint(0, 11)}"},
                                               {"kind": "MeshService", "name": rng.choice(others)})])
                         if tproxy else (),
                         protocol="tcp" if service == "cache" else "http")  # MeshTCPRoute's destinations

    async def put(self, doc: dict[str, Any]) -> tuple[str, str]:
        await self.resources.apply(doc)
        if doc["type"] == "Dataplane":
            self.dps[doc["name"]] = doc
        else:
            self.policies[(doc["type"], doc["name"])] = doc
        return doc["type"], doc["name"]

    async def step(self, sync: XdsSync) -> set[tuple[str, str]]:
        """One random change; returns what sync is told changed (as the store's events would)."""
        rng = self.rng
        op = rng.random()
        names = sorted(self.dps)
        if op < 0.35 or not self.policies:
            name = f"p{rng.randint(1, 12)}"
            existing = [k for k in self.policies if k[1] == name]
            for key in existing:  # one name, one kind at a time keeps the story readable
                await self.resources.delete(self._kind(key[0]), MESH, name)
                del self.policies[key]
            return {*existing, await self.put(policy(rng, names, name))}
        if op < 0.45:
            key = rng.choice(sorted(self.policies))
            await self.resources.delete(self._kind(key[0]), MESH, key[1])
            del self.policies[key]
            return {key}
        if op < 0.55 or len(names) < 4:
            return {await self.put(self.new_dataplane())}
        name = rng.choice(names)
        doc = self.dps[name]
        if op < 0.62:
            await self.resources.delete(self._kind("Dataplane"), MESH, name)
            del self.dps[name]
            return {("Dataplane", name)}
        if op < 0.72:
            sync.set_leaving(MESH, name, (MESH, name) not in sync.leaving)
            return set()  # set_leaving marks the change itself
        inbound = doc["networking"]["inbound"][0]
        changed = {**doc, "networking": {**doc["networking"], "inbound": [dict(inbound)]}}
        ib = changed["networking"]["inbound"][0]
        what = rng.choice(["ready", "address", "version", "service"])
        if what == "ready":
            if "health" in ib:
                del ib["health"]
            else:
                ib["health"] = {"ready": False}
        elif what == "address":
            changed["networking"]["address"] = f"10.1.0.{rng.randint(1, 250)}"
        elif what == "version":
            ib["tags"] = {**ib["tags"], "version": "v2" if ib["tags"]["version"] == "v1" else "v1"}
        else:
            ib["tags"] = {**ib["tags"], "kuma.io/service": rng.choice(SERVICES)}
        return {await self.put(changed)}

    @staticmethod
    def _kind(kind: str) -> Any:
        from dpagent.controlplane.kinds import kind_of

        return kind_of(kind)


async def full_snapshots(store: MemoryStore, sync: XdsSync) -> dict[str, dict[str, str]]:
    fresh = XdsSync(store, cache=None)
    fresh.leaving = set(sync.leaving)
    state = await fresh._rebuild(MESH)
    assert state is not None
    return {n: proxy_snapshot(state, dp).versions for n, dp in state.by_name.items()}


@pytest.mark.parametrize("seed", range(8))
async def test_incremental_changes_match_a_full_rebuild_and_stay_inside_their_reach(seed: int) -> None:
    rng = random.Random(seed)
    store = await MemoryStore.open()
    try:
        world = World(store, rng)
        # odd seeds run with mTLS (every other one Permissive) so MeshTLS and the mTLS chains are exercised too
        mtls = {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin",
                                                      "mode": "PERMISSIVE" if seed % 4 == 3 else "STRICT"}]}
        await world.resources.apply({"type": "Mesh", "name": MESH, **({"mtls": mtls} if seed % 2 else {})})
        for service in SERVICES:
            for _ in range(2):
                await world.put(world.new_dataplane(service))
        sync = XdsSync(store, cache=None)
        state = await sync._rebuild(MESH)
        assert state is not None
        before = {n: proxy_snapshot(state, dp).versions for n, dp in state.by_name.items()}
        narrow = 0
        for step in range(40):
            for change in await world.step(sync):
                sync.mark(MESH, *change)
            changes = sync._dirty.pop(MESH, set())
            state, reached = await sync._change(MESH, changes)
            assert state is not None
            after = {n: proxy_snapshot(state, dp).versions for n, dp in state.by_name.items()}
            full = await full_snapshots(store, sync)
            diff = {n: [t.rsplit(".", 1)[-1] for t in after[n] if after[n][t] != full.get(n, {}).get(t)]
                    for n in after if after[n] != full.get(n)}
            assert after == full, f"seed {seed} step {step}: {changes} differ from a full rebuild: {diff}"
            moved = {n for n in after if after[n] != before.get(n)}
            if reached is not None:
                narrow += 1
                assert moved <= reached, f"seed {seed} step {step}: {changes} changed {moved - reached} unreached"
            before = after
        assert narrow > 10, "most changes should have a bounded reach"
    finally:
        await store.close()


async def test_a_policy_change_keeps_what_the_dataplanes_determine() -> None:
    """The serialised shared clusters and endpoints are the same objects after a policy-only change."""
    store = await MemoryStore.open()
    try:
        world = World(store, random.Random(1))
        await world.resources.apply({"type": "Mesh", "name": MESH})
        for i, service in enumerate(SERVICES):
            await world.put(dataplane(f"{service}-1", service, i + 1, outbounds=("web",)))
        sync = XdsSync(store, cache=None)
        state = await sync._rebuild(MESH)
        assert state is not None
        key = await world.put({"type": "MeshTimeout", "mesh": MESH, "name": "t", "spec": {
            "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "api"},
                                                   "default": {"http": {"requestTimeout": "2s"}}}]}})
        new, reached = await sync._change(MESH, {key})
        assert new is not None and new.ctx is not state.ctx
        assert new.ctx.shared_resources is state.ctx.shared_resources
        assert reached == frozenset(), "nobody calls api"
        key = await world.put({"type": "MeshTimeout", "mesh": MESH, "name": "t", "spec": {
            "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "web"},
                                                   "default": {"http": {"requestTimeout": "2s"}}}]}})
        _, reached = await sync._change(MESH, {key})
        assert reached == frozenset(f"{s}-1" for s in SERVICES), "web's callers only"
    finally:
        await store.close()
