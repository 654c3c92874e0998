"""Names of the Envoy resources a route policy creates, each a pure function of its input so every proxy (and every
CP restart) produces the same bytes and shared clusters stay shared.

Legacy destinations follow Kuma's shape (§1.10): a whole service's cluster is the service name, a tag subset of it
is `<service>-<16 hex>`; the suffix is our own stable hash of the sorted tags.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dpagent.controlplane.policies.meshroute.refs import MESH_SERVICE, MESH_SERVICE_SUBSET, BackendRef
from dpagent.controlplane.xds.names import service_cluster
from dpagent.model.dataplane import SERVICE_TAG

_SUBSET_HEX = 16


def subset_cluster(service: str, tags: Mapping[str, str]) -> str:
    """A tag subset of `service`. Tags that only restate the service select the whole service, so they share its
    cluster; any other tag set gets a suffix that depends on the set, not on the order it was written in."""
    extra = {k: v for k, v in tags.items() if not (k == SERVICE_TAG and v == service)}
    if not extra:
        return service_cluster(service)
    canonical = json.dumps(sorted(extra.items()), separators=(",", ":"))
    return f"{service}-{hashlib.sha256(canonical.encode()).hexdigest()[:_SUBSET_HEX]}"


def route_name(matches: Any) -> str:
    """A route's name carries its identity (so later policies can address one route): the base64 SHA-256 of the
    rule's `matches` as canonical JSON, as Kuma does for legacy outbounds."""
    canonical = json.dumps(matches, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(hashlib.sha256(canonical.encode()).digest()).decode()


def resolve_legacy(ref: BackendRef) -> str | None:
    """The cluster name of a legacy backendRef; None when it names something this CP cannot route to."""
    if not ref.legacy or not ref.name:
        return None
    if ref.kind == MESH_SERVICE_SUBSET:
        return subset_cluster(ref.name, ref.tags)
    return service_cluster(ref.name) if ref.kind == MESH_SERVICE else None
