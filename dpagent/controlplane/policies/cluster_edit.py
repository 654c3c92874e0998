"""Editing clusters per proxy without losing their sharing.

A service's cluster is built and serialised once per mesh change and handed to every proxy that calls it. A
policy that changes it for some proxies memoises the changed cluster by (kind, cluster, the resource it started
from, extra key such as the effective conf), so every proxy with the same conf still gets the same bytes and
proxies without the policy keep the original."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.xds.resources import Entry, Origin, ResourceSet
from dpagent.controlplane.xds.snapshot import CLUSTER

Edit = Callable[[cluster_pb2.Cluster], None]


def edit_outbound_clusters(rs: ResourceSet, ctx: MeshView, kind: str,
                           plan: Callable[[Entry], tuple[Hashable, Edit] | None],
                           origin: Origin = Origin.OUTBOUND) -> None:
    """`plan(entry)` returns (a key naming every input of the edit, the edit) or None to leave the cluster.
    `origin` INBOUND edits the inbounds' local clusters, which proxies with the same app port share too."""
    for entry in list(rs.entries(CLUSTER, origin)):
        planned = plan(entry)
        if planned is None:
            continue
        key, edit = planned
        if entry.shared is None:  # already private to this proxy (another plugin edited it): edit in place
            edit(entry.message)  # type: ignore[arg-type]
            continue
        base = entry.shared

        def build(base: Any = base, edit: Edit = edit) -> cluster_pb2.Cluster:
            cluster = cluster_pb2.Cluster()
            cluster.CopyFrom(base.message)
            edit(cluster)
            return cluster

        shared = getattr(ctx, "shared", None)
        if shared is None:
            edit(rs.edit(entry))  # type: ignore[arg-type]
            continue
        # The base is keyed by its content digest: an earlier plugin's shared edit is a different base.
        rs.replace(entry, shared((kind, entry.name, base.digest, key), CLUSTER, entry.name, build))
