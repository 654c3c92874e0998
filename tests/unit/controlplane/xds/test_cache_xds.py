"""SnapshotCache: change detection per type, watches, and the JSON-able delivery record."""

import asyncio
import json

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER, Snapshot


def snap(clusters=("a",), listeners=("l",)) -> Snapshot:
    return Snapshot.build({
        CLUSTER: {n: cluster_pb2.Cluster(name=n) for n in clusters},
        LISTENER: {n: listener_pb2.Listener(name=n) for n in listeners},
    })


async def test_set_snapshot_reports_only_changed_types_and_wakes_watches():
    cache = SnapshotCache(clock=lambda: 100.0)
    w = cache.watch("n1")
    other = cache.watch("n2")
    assert cache.set_snapshot("n1", snap()) == [CLUSTER, LISTENER]
    assert await asyncio.wait_for(w.wait(), 1) == [CLUSTER, LISTENER]
    assert cache.set_snapshot("n1", snap()) == []  # identical content: nothing to push
    assert cache.set_snapshot("n1", snap(listeners=("l", "m"))) == [LISTENER]
    assert await asyncio.wait_for(w.wait(), 1) == [LISTENER]
    assert not other._pending
    cache.cancel_watch(w)
    cache.set_snapshot("n1", snap(clusters=("b",)))
    assert not w._pending


async def test_identical_snapshot_keeps_the_previous_object():
    cache = SnapshotCache()
    first = snap()
    cache.set_snapshot("n", first)
    cache.set_snapshot("n", snap())
    assert cache.get_snapshot("n") is first


def test_status_is_json_and_tracks_sent_ack_nack():
    t = [10.0]
    cache = SnapshotCache(clock=lambda: t[0])
    assert cache.status("n") is None
    cache.set_snapshot("n", snap())
    cache.stream_opened("n")
    cache.record_sent("n", CLUSTER, "v1", "1")
    t[0] = 11.0
    cache.record_ack("n", CLUSTER, "v1")
    cache.record_sent("n", LISTENER, "v2", "2")
    cache.record_nack("n", LISTENER, "v2", "bad listener")
    st = cache.status("n")
    json.dumps(st)
    assert st["connected"] is True and st["since"] == 10.0 and st["pushes"] == 2
    assert st["types"][CLUSTER]["acked_version"] == "v1"
    assert st["types"][CLUSTER]["snapshot_version"] == snap().version(CLUSTER)
    assert st["types"][LISTENER]["nack"] == {"version": "v2", "error": "bad listener", "at": 11.0}
    cache.record_ack("n", LISTENER, "v2")
    assert cache.status("n")["types"][LISTENER]["nack"] is None
    cache.stream_closed("n")
    st = cache.status("n")
    assert st["connected"] is False and st["last_disconnect"] == 11.0
    cache.clear("n")
    assert cache.status("n") is None
    assert cache.node_ids() == []
