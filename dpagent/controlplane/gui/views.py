"""What each GUI page shows, built from plain inputs: stored documents, the delivery cache's status records, sync's
mesh context. No I/O here, so every figure a page shows is unit-tested without a browser, and the server only
gathers inputs and encodes the result once.

Statuses follow what an operator asks first: *online* (an ADS stream is open), *NACKing* (online, and Envoy
refused the last config of some type: it runs on older config), *offline* (no stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from dpagent import pki
from dpagent.controlplane.policies.matching import match
from dpagent.controlplane.policies.meshtrafficpermission.api import ALLOW_WITH_SHADOW_DENY, EXACT, Match
from dpagent.controlplane.policies.meshtrafficpermission.plugin import InboundPermissions, MtpRules
from dpagent.controlplane.policies.registry import plugin_for
from dpagent.controlplane.policies.targetref import TargetRef, selects
from dpagent.controlplane.xds.context import MeshContext
from dpagent.controlplane.xds.names import spiffe_id
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh, enabled_backend

ONLINE, OFFLINE, NACKING = "online", "offline", "nacking"
MTP = "MeshTrafficPermission"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
HOUR, DAY = 3600.0, 86400.0


# ---- dataplanes ------------------------------------------------------------------------------------------------

class LastNack(msgspec.Struct, frozen=True):
    type: str  # short type name: clusters, listeners, ...
    error: str
    at: float


class DataplaneRow(msgspec.Struct, frozen=True):
    mesh: str
    name: str
    services: list[str]
    tags: dict[str, str]  # inbound tags besides kuma.io/service (the first value seen per tag)
    address: str
    status: str
    since: float | None = None  # online: stream start; offline: last disconnect
    agent_version: str = ""
    envoy_version: str = ""
    cert_backend: str = ""
    cert_issued: float | None = None
    cert_expires: float | None = None
    last_nack: LastNack | None = None


def short_type(type_url: str) -> str:
    """`...config.cluster.v3.Cluster` → `clusters`: the names `inspect --config-type` uses."""
    return type_url.rsplit(".", 1)[-1].lower() + "s"


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def last_nack(status: Mapping[str, Any] | None) -> LastNack | None:
    """The most recent NACK still standing (a later ACK of that version clears it in the cache)."""
    best: LastNack | None = None
    for url, ts in ((status or {}).get("types") or {}).items():
        nack = ts.get("nack")
        if nack and (best is None or nack["at"] > best.at):
            best = LastNack(short_type(url), str(nack["error"]), float(nack["at"]))
    return best


def status_of(status: Mapping[str, Any] | None) -> str:
    if not status or not status.get("connected"):
        return OFFLINE
    return NACKING if last_nack(status) is not None else ONLINE


def dataplane_row(dp: Dataplane, insight: Mapping[str, Any] | None, status: Mapping[str, Any] | None,
                  versions: Mapping[str, str] | None = None) -> DataplaneRow:
    services: list[str] = []
    tags: dict[str, str] = {}
    for ib in dp.networking.inbound:
        for k, v in ib.tags.items():
            if k == "kuma.io/service":
                if v not in services:
                    services.append(v)
            else:
                tags.setdefault(k, v)
    if not services and dp.networking.gateway:
        gw = (dp.networking.gateway.get("tags") or {}).get("kuma.io/service")
        services = [gw] if gw else []
    mtls = (insight or {}).get("mTLS") or {}
    st = status_of(status)
    since = (status or {}).get("since") if st != OFFLINE else (status or {}).get("last_disconnect")
    issued = mtls.get("lastCertificateRegeneration")
    return DataplaneRow(
        mesh=dp.mesh, name=dp.name, services=services, tags=tags, address=dp.networking.address, status=st,
        since=since, agent_version=(versions or {}).get("agent", ""), envoy_version=(versions or {}).get("envoy", ""),
        cert_backend=str(mtls.get("issuedBackend") or ""), cert_issued=float(issued) if issued else None,
        cert_expires=_epoch(mtls.get("certificateExpirationTime")), last_nack=last_nack(status))


# ---- overview --------------------------------------------------------------------------------------------------

class MeshSummary(msgspec.Struct, frozen=True):
    name: str
    mtls: str  # the enabled backend, or "off"
    dataplanes: int
    online: int
    offline: int
    nacking: int
    services: int
    policies: dict[str, int]  # kind → count (kinds with none left out)


class ControlPlaneInfo(msgspec.Struct, frozen=True):
    version: str
    store: str  # memory, sqlite or postgres
    store_location: str
    leader: str  # who leads, or "single replica" when the CP runs without leader election
    started: float
    uptime: float


class Overview(msgspec.Struct, frozen=True):
    cp: ControlPlaneInfo
    meshes: list[MeshSummary]


def mesh_summary(mesh_doc: Mapping[str, Any], statuses: Iterable[str], services: int,
                 policy_counts: Mapping[str, int]) -> MeshSummary:
    """`statuses`: one per dataplane of the mesh; `services`: how many distinct services their inbounds carry."""
    seen = list(statuses)
    by = {s: seen.count(s) for s in (ONLINE, OFFLINE, NACKING)}
    mtls = (mesh_doc.get("mtls") or {}).get("enabledBackend") or "off"
    return MeshSummary(str(mesh_doc["name"]), str(mtls), len(seen), by[ONLINE] + by[NACKING], by[OFFLINE],
                       by[NACKING], services, {k: n for k, n in sorted(policy_counts.items()) if n})


# ---- services and who may call whom ----------------------------------------------------------------------------

ALLOW, DENY, MIXED, SHADOW, OPEN = "allow", "deny", "mixed", "shadow", "open"


class PermissionMatrix(msgspec.Struct, frozen=True):
    mesh: str
    enforced: bool  # False with mTLS off: nothing is checked, every call goes through
    services: list[str]  # callers (rows) and callees (columns), in this order
    # caller → callee → allow | deny | mixed (the callee's instances disagree) | shadow (allowed, logged as a
    # deny) | open (no mTLS)
    decisions: dict[str, dict[str, str]]
    policies: dict[str, list[str]]  # callee → the MeshTrafficPermissions that select its inbounds


def _hits(m: Match, sid: str) -> bool:
    """A `rules[]` match against a caller's SPIFFE ID. A match with an SNI condition is left out: it depends on what
    the caller asked for, not on who it is, so it decides no cell of the matrix."""
    if m.sni is not None:
        return False
    if m.spiffe_id is None:
        return True
    return sid == m.spiffe_id.value if m.spiffe_id.type == EXACT else sid.startswith(m.spiffe_id.value)


def inbound_decision(perm: InboundPermissions | None, mesh: str, caller: str,
                     legacy: tuple[bool, tuple[str, ...]] | None = None) -> str:
    """What the two RBAC filters of one inbound do with `caller` (mirrors meshtrafficpermission/xds.decisions):
    a deny anywhere wins, then any allow; nobody else gets in. `legacy`: perm.legacy(), when already known."""
    if perm is None:
        return DENY
    sid = spiffe_id(mesh, caller)
    legacy_allow = False
    if perm.rules:
        by_default, exceptions = legacy or perm.legacy()
        if by_default and caller in exceptions:
            return DENY
        legacy_allow = by_default or caller in exceptions
    if any(_hits(m, sid) for m in perm.deny):
        return DENY
    if legacy_allow:
        return SHADOW if perm.action_for(caller) == ALLOW_WITH_SHADOW_DENY else ALLOW
    if any(_hits(m, sid) for m in perm.allow):
        return ALLOW
    return SHADOW if any(_hits(m, sid) for m in perm.shadow) else DENY


def permission_matrix(ctx: MeshContext) -> PermissionMatrix:
    """For every (caller service, callee service) pair, whether the callee's proxies let the caller in. Callers are
    identified as the mesh's proxies prove them: `spiffe://<mesh>/<service>`.

    An inbound's permissions depend only on which policies selected it (and the mesh), so they are worked out once
    per distinct policy set, not once per proxy: a mesh of 1,000 proxies has a handful of those."""
    mesh = ctx.mesh.name
    services = sorted({ib.service for dp in ctx.dataplanes for ib in dp.networking.inbound if ib.service})
    enforced = enabled_backend(ctx.mesh) is not None
    if not enforced:
        return PermissionMatrix(mesh, False, services, {a: dict.fromkeys(services, OPEN) for a in services},
                                {s: [] for s in services})
    plugin = plugin_for(MTP)
    assert plugin is not None
    policies = ctx.parsed_policies.get(MTP, ())
    perms: dict[tuple[str, ...], InboundPermissions | None] = {}
    sets: dict[str, set[tuple[str, ...]]] = {s: set() for s in services}
    for dp in ctx.dataplanes:
        matched = match(MTP, policies, dp, cache=ctx.match_cache)
        for ib in dp.networking.inbound:
            if not ib.service:
                continue
            key = f"{ib.address or dp.networking.address}:{ib.port}"
            chosen = matched.inbounds[key].policies if key in matched.inbounds else ()
            sets[ib.service].add(chosen)
            if chosen not in perms:
                rules = plugin.rules(ctx, dp, matched)
                assert isinstance(rules, MtpRules)
                perms[chosen] = rules.inbounds.get(key) if chosen else None
    legacy = {chosen: perm.legacy() if perm is not None and perm.rules else None for chosen, perm in perms.items()}
    decisions: dict[str, dict[str, str]] = {}
    for caller in services:
        by_set = {chosen: inbound_decision(perm, mesh, caller, legacy[chosen]) for chosen, perm in perms.items()}
        row = decisions[caller] = {}
        for callee in services:
            seen = {by_set[c] for c in sets[callee]}
            row[callee] = seen.pop() if len(seen) == 1 else MIXED
    return PermissionMatrix(mesh, True, services, decisions,
                            {s: sorted({p for c in sets[s] for p in c}) for s in services})


class Instance(msgspec.Struct, frozen=True):
    name: str
    address: str
    status: str
    ready: bool  # every inbound of this service reports ready (Kuma's inbound health)


class ServiceView(msgspec.Struct, frozen=True):
    name: str
    protocol: str
    instances: list[Instance]
    healthy: int  # online and ready
    on_proxies: list[str]  # "Kind/name" of policies whose top targetRef selects one of its instances
    to: list[str]  # policies with a to[] entry naming it (traffic toward it)
    from_: list[str] = msgspec.field(name="from")  # policies with a from[] entry naming it (traffic it sends)


class ServicesPage(msgspec.Struct, frozen=True):
    mesh: str
    services: list[ServiceView]
    matrix: PermissionMatrix


def _names(ref: TargetRef | None, service: str) -> bool:
    return ref is not None and ref.kind in ("MeshService", "MeshServiceSubset") and ref.name == service


class _ServiceIndex(msgspec.Struct, frozen=True):
    name: str
    protocol: str
    members: list[tuple[str, str, bool]]  # (dataplane, address, ready)
    on_proxies: list[str]
    to: list[str]
    from_: list[str]


def _selects_service(ref: TargetRef, service: str, members: Sequence[tuple[Dataplane, bool]]) -> bool:
    """Does the policy's top targetRef pick an instance of `service`? A MeshService ref names one service (not the
    other services its proxies may also serve), and a Mesh ref answers the same for every proxy."""
    if ref.kind in ("MeshService", "MeshServiceSubset") and ref.name != service:
        return False
    if ref.kind == "Mesh":
        return bool(members) and selects(ref, members[0][0])
    return any(selects(ref, dp) for dp, _ in members)


def _service_index(ctx: MeshContext) -> list[_ServiceIndex]:
    """What the services page shows apart from live status: depends on the mesh context only (memoised on it)."""
    by_service: dict[str, list[tuple[Dataplane, bool]]] = {}
    protocols: dict[str, str] = {}
    for dp in ctx.dataplanes:
        ready: dict[str, bool] = {}
        for ib in dp.networking.inbound:
            service = ib.tags.get("kuma.io/service", "")
            if service:
                ready[service] = ready.get(service, True) and (ib.health is None or ib.health.ready)
                protocols.setdefault(service, ib.protocol)
        for s, ok in ready.items():
            by_service.setdefault(s, []).append((dp, ok))
    policies = [p for kind in sorted(ctx.parsed_policies) for p in ctx.parsed_policies[kind]]
    out = []
    for s in sorted(by_service):
        members = sorted(by_service[s], key=lambda m: m[0].name)
        on = [f"{p.kind}/{p.name}" for p in policies if _selects_service(p.target_ref, s, members)]
        to = [f"{p.kind}/{p.name}" for p in policies if any(_names(e.target_ref, s) for e in p.to)]
        frm = [f"{p.kind}/{p.name}" for p in policies if any(_names(e.target_ref, s) for e in p.from_)]
        out.append(_ServiceIndex(s, protocols.get(s, "tcp"), [(dp.name, dp.networking.address, ok)
                                                              for dp, ok in members], on, to, frm))
    return out


def services_page(ctx: MeshContext, statuses: Mapping[str, str], matrix: PermissionMatrix | None = None
                  ) -> ServicesPage:
    """`statuses`: dataplane name → online/offline/nacking; `matrix`: permission_matrix(ctx), when already known."""
    index = ctx.memo(("gui", "services"), lambda: _service_index(ctx))
    views = []
    for s in index:
        instances = [Instance(name, address, statuses.get(name, OFFLINE), ok) for name, address, ok in s.members]
        healthy = sum(1 for i in instances if i.ready and i.status != OFFLINE)
        views.append(ServiceView(s.name, s.protocol, instances, healthy, s.on_proxies, s.to, s.from_))
    return ServicesPage(ctx.mesh.name, views, matrix or ctx.memo(("gui", "matrix"), lambda: permission_matrix(ctx)))


# ---- policies --------------------------------------------------------------------------------------------------

class PolicyRow(msgspec.Struct, frozen=True):
    kind: str
    mesh: str
    name: str
    target: str  # the top targetRef, described
    modified: float


def target_of(doc: Mapping[str, Any]) -> str:
    raw = (doc.get("spec") or {}).get("targetRef") or {"kind": "Mesh"}
    try:
        return msgspec.convert(raw, TargetRef).describe()
    except msgspec.ValidationError:
        return str(raw.get("kind", "?"))


class Affected(msgspec.Struct, frozen=True):
    name: str
    inbounds: list[str]


def affected(ctx: MeshContext, kind: str, name: str) -> list[Affected]:
    """The dataplanes `kind`/`name` selects: only that kind is matched, so a policy page stays fast on a big mesh."""
    out = []
    policies = ctx.parsed_policies.get(kind, ())
    for dp in sorted(ctx.dataplanes, key=lambda d: d.name):
        m = match(kind, policies, dp, cache=ctx.match_cache)
        if name in m.policies:
            out.append(Affected(dp.name, sorted(k for k, ib in m.inbounds.items() if name in ib.policies)))
    return out


# ---- certificates and CA rotation ------------------------------------------------------------------------------

class RootCert(msgspec.Struct, frozen=True):
    backend: str
    subject: str
    serial: str
    not_before: float
    not_after: float


class BackendView(msgspec.Struct, frozen=True):
    name: str
    type: str
    enabled: bool
    in_bundle: bool
    leaf_lifetime: str
    mode: str = ""


class Timeline(msgspec.Struct, frozen=True):
    expired: int
    next_hour: int
    next_day: int
    later: int
    issued_last_hour: int
    issued_last_day: int
    expiry_by_hour: list[int]  # leaves expiring in each of the next 24 hours
    issued_by_hour: list[int]  # leaves issued in each of the last 24 hours, oldest first


class SwitchProgress(msgspec.Struct, frozen=True):
    """Where a CA switch stands. `bundle_acked / connected`: proxies whose Envoy ACKed a trust bundle with the
    enabled backend's root (only then do new leaves come from it); `leaves_new / leaves_total`: leaves issued by
    the enabled backend. Both at 100 % and no other root left in the bundle: the switch is done."""

    enabled: str
    in_bundle: bool
    issuing_new: bool
    connected: int
    bundle_acked: int
    leaves_total: int
    leaves_new: int
    leaves_old: dict[str, int]  # other backend → live leaves it signed
    done: bool


class MeshCertificates(msgspec.Struct, frozen=True):
    mesh: str
    mtls: bool
    backends: list[BackendView]
    bundle: list[RootCert]
    timeline: Timeline
    progress: SwitchProgress | None


def bundle_roots(bundle_pem: str, backends: Sequence[str]) -> list[RootCert]:
    """The roots in a trust bundle. The bundle is the backends' roots in name order, one each (see Issuer.bundle),
    so the n-th certificate is the n-th backend's."""
    if "BEGIN CERTIFICATE" not in bundle_pem:
        return []
    out = []
    for i, cert in enumerate(pki.load_certs(bundle_pem)):
        info = pki.cert_info(cert)
        out.append(RootCert(backends[i] if i < len(backends) else "?", info.subject, info.serial_hex,
                            info.not_before.timestamp(), info.not_after.timestamp()))
    return out


def timeline(insights: Iterable[Mapping[str, Any]], now: float) -> Timeline:
    expiry = [0] * 24
    issued = [0] * 24
    expired = hour = day = later = issued_hour = issued_day = 0
    for doc in insights:
        m = doc.get("mTLS") or {}
        exp = _epoch(m.get("certificateExpirationTime"))
        if exp is not None:
            left = exp - now
            if left <= 0:
                expired += 1
            elif left <= HOUR:
                hour += 1
            elif left <= DAY:
                day += 1
            else:
                later += 1
            if 0 < left <= DAY:
                expiry[min(23, int(left // HOUR))] += 1
        at = m.get("lastCertificateRegeneration")
        if at:
            ago = now - float(at)
            if 0 <= ago <= DAY:
                issued[23 - min(23, int(ago // HOUR))] += 1
                issued_day += 1
                issued_hour += ago <= HOUR
    return Timeline(expired, hour, hour + day, later, issued_hour, issued_day, expiry, issued)


def switch_progress(mesh: Mesh, bundle_backends: Sequence[str], connected: Iterable[Mapping[str, Any] | None],
                    insights: Iterable[Mapping[str, Any]], issuing_new: bool, now: float) -> SwitchProgress | None:
    """`connected`: the delivery status of each connected proxy of the mesh; `insights`: its leaf records."""
    enabled = enabled_backend(mesh)
    if enabled is None:
        return None
    in_bundle = enabled.name in bundle_backends
    statuses = list(connected)
    acked = 0
    for st in statuses:
        ts = ((st or {}).get("types") or {}).get(SECRET_TYPE) or {}
        if in_bundle and ts.get("acked_version") and ts.get("acked_version") == ts.get("snapshot_version"):
            acked += 1
    total = new = 0
    old: dict[str, int] = {}
    for doc in insights:
        m = doc.get("mTLS") or {}
        exp = _epoch(m.get("certificateExpirationTime"))
        if exp is None or exp <= now or not m.get("issuedBackend"):
            continue
        total += 1
        if m["issuedBackend"] == enabled.name:
            new += 1
        else:
            old[m["issuedBackend"]] = old.get(m["issuedBackend"], 0) + 1
    done = in_bundle and acked == len(statuses) and new == total and list(bundle_backends) == [enabled.name]
    return SwitchProgress(enabled.name, in_bundle, issuing_new, len(statuses), acked, total, new, old, done)


def backends_view(mesh: Mesh, bundle_backends: Sequence[str]) -> list[BackendView]:
    out = []
    for b in mesh.mtls.backends if mesh.mtls else []:
        lifetime = (b.dp_cert.rotation.expiration if b.dp_cert and b.dp_cert.rotation else "24h")
        out.append(BackendView(b.name, b.type, bool(mesh.mtls and mesh.mtls.enabled_backend == b.name),
                               b.name in bundle_backends, lifetime, b.mode))
    for name in bundle_backends:  # a retired backend whose root stays while its leaves live
        if not any(v.name == name for v in out):
            out.append(BackendView(name, "retired", False, True, "-"))
    return out

