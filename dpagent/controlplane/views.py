"""The typed views `inspect` returns: built by controlplane/inspect.py, serialised once at the REST edge, and
decoded into the same structs by the CLI, so both sides agree on every field (no dict reads with guesses).
Light on purpose: the CLI imports it."""

from __future__ import annotations

from typing import Any

import msgspec

# ---- delivery status (field names are the cache's, so existing API clients keep working) ----------------------

class Nack(msgspec.Struct, frozen=True):
    version: str
    error: str
    at: float


class TypeStatus(msgspec.Struct, frozen=True):
    snapshot_version: str | None = None
    sent_version: str | None = None
    sent_at: float | None = None
    acked_version: str | None = None
    acked_at: float | None = None
    nack: Nack | None = None
    pushes: int = 0


class XdsStatus(msgspec.Struct, frozen=True):
    connected: bool = False
    streams: int = 0
    since: float | None = None  # epoch seconds of the current stream's start
    last_disconnect: float | None = None
    pushes: int = 0
    types: dict[str, TypeStatus] = {}  # by type URL


class CertificateStatus(msgspec.Struct, frozen=True, rename="camel"):
    serial: str | None = None
    not_after: str | None = None  # ISO 8601, UTC
    backend: str | None = None
    spiffe_id: str | None = None
    issued: float | None = None  # epoch seconds
    regenerations: int | None = None


# ---- policies -------------------------------------------------------------------------------------------------

class InboundPolicies(msgspec.Struct, frozen=True):
    inbound: str  # address:port
    policies: list[str]  # lowest priority first
    conf: Any = None  # the plugin's effective conf on this inbound


class OutboundPolicies(msgspec.Struct, frozen=True):
    service: str
    policies: list[str]
    conf: dict[str, Any] = {}  # the merged `to[]` conf toward this service


class KindPolicies(msgspec.Struct, frozen=True):
    kind: str
    policies: list[str]  # every policy of this kind that selects the proxy, lowest priority first
    inbounds: list[InboundPolicies] = []
    outbounds: list[OutboundPolicies] = []
    warnings: list[str] = []


class DataplaneInspect(msgspec.Struct, frozen=True):
    dataplane: dict[str, Any]
    xds: XdsStatus | None = None
    certificate: CertificateStatus | None = None
    policies: list[KindPolicies] = []
    warnings: list[str] = []


class AffectedDataplane(msgspec.Struct, frozen=True):
    name: str
    inbounds: list[str]  # for inbound policies: the inbounds it selects


class PolicyInspect(msgspec.Struct, frozen=True):
    kind: str
    mesh: str
    name: str
    total: int
    items: list[AffectedDataplane]
