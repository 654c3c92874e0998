"""The VIP allocator, the DNS table format the agent parses, and sync persisting VIPs without looping."""

from __future__ import annotations

import asyncio
import json

import pytest

from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.xds import vips as vip
from dpagent.controlplane.xds.dns import dns_table
from dpagent.controlplane.xds.sync import CONFIG_KINDS, XdsSync
from dpagent.errors import ConfigError


def test_new_services_get_lowest_free_addresses_sorted() -> None:
    assert vip.allocate({}, ["web", "backend", "db"]) == {
        "backend": "240.0.0.1", "db": "240.0.0.2", "web": "240.0.0.3"}


def test_stable_when_services_come_and_go() -> None:
    first = vip.allocate({}, ["a", "b", "c"])
    assert vip.allocate(first, ["c", "b", "a", "zz"]) == {**first, "zz": "240.0.0.4"}
    # "a" goes away: the others keep their addresses; a newcomer reuses the freed (lowest) one.
    without_a = vip.allocate(first, ["b", "c"])
    assert without_a == {"b": first["b"], "c": first["c"]}
    assert vip.allocate(without_a, ["b", "c", "new"])["new"] == first["a"]


def test_existing_out_of_range_or_duplicate_or_garbage_is_reassigned_deterministically() -> None:
    existing = {"a": "10.0.0.1", "b": "240.0.0.7", "c": "240.0.0.7", "d": "not-an-ip", "e": "240.0.0.0"}
    out = vip.allocate(existing, ["a", "b", "c", "d", "e"])
    assert out["b"] == "240.0.0.7"  # first in sorted order keeps a duplicated address
    assert [out[s] for s in ("a", "c", "d", "e")] == ["240.0.0.1", "240.0.0.2", "240.0.0.3", "240.0.0.4"]
    assert out == vip.allocate(existing, ["e", "d", "c", "b", "a"])


def test_skips_network_and_broadcast_and_exhaustion_is_clear() -> None:
    assert vip.allocate({}, ["a", "b"], "10.9.0.0/30") == {"a": "10.9.0.1", "b": "10.9.0.2"}
    with pytest.raises(vip.VipRangeExhausted, match=r"10\.9\.0\.0/30 has 2 usable addresses but 3 .*--vip-cidr"):
        vip.allocate({}, ["a", "b", "c"], "10.9.0.0/30")
    with pytest.raises(ConfigError, match="not a CIDR"):
        vip.allocate({}, ["a"], "nope")


def test_doc_round_trip_tolerates_garbage() -> None:
    doc = vip.vips_doc("default", {"b": "240.0.0.2", "a": "240.0.0.1"})
    assert doc == {"type": "VirtualIPs", "mesh": "default", "name": "vips",
                   "vips": {"a": "240.0.0.1", "b": "240.0.0.2"}}
    assert vip.vips_from_doc(doc) == doc["vips"]
    assert vip.vips_from_doc({"vips": {"a": 1, "b": "240.0.0.2"}}) == {"b": "240.0.0.2"}
    assert vip.vips_from_doc(None) == {}


def test_dns_table_format_sorted_with_dotted_aliases() -> None:
    vips = {"backend": "240.0.0.1", "a_b_svc_80": "240.0.0.2", "a.b.svc.80": "240.0.0.3", "novip": ""}
    body = dns_table({k: v for k, v in vips.items() if v}, ["backend", "a_b_svc_80", "a.b.svc.80", "novip"])
    assert json.loads(body) == {"records": [
        {"name": "a.b.svc.80.mesh", "ips": ["240.0.0.3"]},  # the service's own name beats another's alias
        {"name": "a_b_svc_80.mesh", "ips": ["240.0.0.2"]},
        {"name": "backend.mesh", "ips": ["240.0.0.1"]}], "ttl": 30}
    assert body == dns_table(vips, ["a.b.svc.80", "backend", "a_b_svc_80"])  # order-independent bytes
    assert json.loads(dns_table({}, [], ttl=5)) == {"records": [], "ttl": 5}


async def test_sync_persists_vips_once_and_does_not_loop() -> None:
    assert vip.KIND not in CONFIG_KINDS
    store = MemoryStore()
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    for name, service in (("web-1", "web"), ("backend-1", "backend")):
        await store.create("Dataplane", "default", name, {"type": "Dataplane", "mesh": "default", "name": name,
                           "networking": {"address": "10.0.0.1", "inbound": [
                               {"port": 8080 if service == "web" else 8081, "tags": {"kuma.io/service": service}}]}})
    sync = XdsSync(store, cache=None, vip_cidr="10.100.0.0/24")
    state = await sync._rebuild("default")
    assert state is not None and dict(state.ctx.vips) == {"backend": "10.100.0.1", "web": "10.100.0.2"}
    rec = await store.get(vip.KIND, "default", vip.NAME)
    assert rec is not None and rec.doc["vips"] == dict(state.ctx.vips)
    await sync._rebuild("default")
    again = await store.get(vip.KIND, "default", vip.NAME)
    assert again is not None and again.version == rec.version  # unchanged: not rewritten
    sub = await store.subscribe()
    await store.delete("Dataplane", "default", "web-1")
    await sync._rebuild("default")
    events = []
    while True:
        try:
            events.append(await asyncio.wait_for(sub.__anext__(), 0.05))
        except TimeoutError:
            break
    assert [(e.kind, e.op) for e in events] == [("Dataplane", "delete"), (vip.KIND, "update")]
    rec = await store.get(vip.KIND, "default", vip.NAME)
    assert rec is not None and rec.doc["vips"] == {"backend": "10.100.0.1"}
