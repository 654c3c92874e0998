"""The universal `Dataplane` resource (Kuma's YAML, reference kuma-dp.md §8): schema, validation, typed view."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.durations import parse_duration
from dpagent.errors import ValidationError
from dpagent.model.validation import Violations, join

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
PROTOCOLS = ("http", "http2", "grpc", "tcp", "kafka")
BACKEND_KINDS = ("MeshService", "MeshExternalService", "MeshMultiZoneService")
# Envoy's admin listener and, without serviceAddress, the application behind an inbound both sit on loopback
# (the inbound generator forwards to 127.0.0.1:<servicePort>).
ADMIN_ADDRESS = WORKLOAD_ADDRESS = "127.0.0.1"


class _S(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False):
    pass


class Health(_S):
    ready: bool = True


class Inbound(_S):
    port: int
    service_port: int = 0
    service_address: str = ""
    address: str = ""
    tags: dict[str, str] = {}
    health: Health | None = None
    service_probe: dict[str, Any] | None = None
    state: str = ""
    name: str = ""

    @property
    def service(self) -> str:
        return self.tags.get(SERVICE_TAG, "")

    @property
    def protocol(self) -> str:
        return self.tags.get(PROTOCOL_TAG, "tcp")

    @property
    def workload_port(self) -> int:
        return self.service_port or self.port


class Outbound(_S):
    port: int
    address: str = "127.0.0.1"
    tags: dict[str, str] = {}
    backend_ref: dict[str, Any] | None = None

    @property
    def service(self) -> str:
        if self.tags.get(SERVICE_TAG):
            return self.tags[SERVICE_TAG]
        return str((self.backend_ref or {}).get("name", ""))


class ReachableRef(_S):
    kind: str
    name: str = ""


class ReachableBackends(_S):
    refs: list[ReachableRef] = []


class TransparentProxying(_S):
    redirect_port_inbound: int = 15006
    redirect_port_outbound: int = 15001
    reachable_services: list[str] = []
    reachable_backends: ReachableBackends | None = None
    direct_access_services: list[str] = []
    ip_family_mode: str = ""

    def reachable_mesh_services(self) -> list[str] | None:
        """The mesh services (`kuma.io/service`) this proxy gets outbounds for, None for all of them.

        `reachableServices` and `reachableBackends`' MeshService refs add up. Once `reachableBackends` is set the
        proxy reaches only what is listed: refs naming only external services leave it no mesh service at all."""
        if self.reachable_backends is None:
            return list(self.reachable_services) or None
        return sorted({*self.reachable_services,
                       *(r.name for r in self.reachable_backends.refs if r.kind == "MeshService")})

    def reaches_external(self, name: str) -> bool:
        """Whether this proxy gets the MeshExternalService `name`: every one unless `reachableBackends` lists some."""
        return self.reachable_backends is None or any(
            r.kind == "MeshExternalService" and r.name == name for r in self.reachable_backends.refs)


class Admin(_S):
    port: int = 0


class Networking(_S):
    address: str
    advertised_address: str = ""
    inbound: list[Inbound] = []
    outbound: list[Outbound] = []
    gateway: dict[str, Any] | None = None
    transparent_proxying: TransparentProxying | None = None
    admin: Admin | None = None


class Dataplane(_S):
    mesh: str
    name: str
    networking: Networking
    type: str = "Dataplane"
    labels: dict[str, str] = {}
    metrics: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None

    @property
    def services(self) -> list[str]:
        return sorted({i.service for i in self.networking.inbound if i.service})

    def all_tags(self) -> dict[str, set[str]]:
        """Every tag value across inbounds (and gateway), the set a token's Tags claim is checked against."""
        out: dict[str, set[str]] = {}
        sources = [i.tags for i in self.networking.inbound]
        if self.networking.gateway:
            sources.append(self.networking.gateway.get("tags", {}) or {})
        for tags in sources:
            for k, v in tags.items():
                out.setdefault(k, set()).add(v)
        return out


_TOP = ("type", "mesh", "name", "labels", "networking", "metrics", "probes", "creationTime", "modificationTime")
_NET = ("address", "advertisedAddress", "inbound", "outbound", "gateway", "transparentProxying", "admin", "listeners")
_INBOUND = ("port", "servicePort", "serviceAddress", "address", "tags", "health", "serviceProbe", "state", "name",
            "protocol")
_OUTBOUND = ("port", "address", "tags", "backendRef")
_PROBE = ("interval", "timeout", "unhealthyThreshold", "healthyThreshold", "tcp")
_TPROXY = ("redirectPortInbound", "redirectPortOutbound", "reachableServices", "directAccessServices",
           "ipFamilyMode", "reachableBackends")


def validate_dataplane(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded Dataplane document, with Kuma-style paths."""
    v = Violations()
    top = v.document(doc, "Dataplane", _TOP)
    if top is None:
        return v.items
    mesh = v.mesh_ref(top.get("mesh"))
    v.name(top.get("name"), "name")
    v.labels(top.get("labels"), mesh or "")
    net = v.mapping(top.get("networking"), "networking")
    if net is None:
        return v.items
    v.unknown(net, _NET, "networking")
    address = v.address(net.get("address"), "networking.address")
    if address is not None and _unspecified(address):
        v.add("networking.address", f"must not be {address} (an unspecified address): other proxies connect to this "
                                    "address, so give this host's routable IP or DNS name")
    if net.get("advertisedAddress") is not None:
        v.ip(net.get("advertisedAddress"), "networking.advertisedAddress")
    inbounds = v.sequence(net.get("inbound"), "networking.inbound")
    gateway = v.mapping(net.get("gateway"), "networking.gateway", required=False)
    tproxy = v.mapping(net.get("transparentProxying"), "networking.transparentProxying", required=False)
    if not inbounds and gateway is None:
        v.add("networking", "has to contain at least one inbound interface or gateway")
    if inbounds and gateway is not None:
        v.add("networking", "inbound cannot be defined both with gateway")
    seen: dict[tuple[str, int], int] = {}
    for i, p, m in v.objects(inbounds, "networking.inbound", _INBOUND):
        port = v.port(m.get("port"), join(p, "port"))
        v.port(m.get("servicePort"), join(p, "servicePort"), required=False)
        v.ip(m.get("serviceAddress"), join(p, "serviceAddress"), required=False)
        v.ip(m.get("address"), join(p, "address"), required=False)
        listen = m.get("address") or net.get("address")
        if m.get("serviceAddress") == listen and m.get("servicePort") in (None, 0, m.get("port")):
            v.add(join(p, "serviceAddress"), "serviceAddress and servicePort have to differ from the address and "
                                             "port Envoy listens on (traffic would loop back into Envoy)")
        _validate_probe(v, m.get("serviceProbe"), join(p, "serviceProbe"))
        tags = v.tags(m.get("tags"), join(p, "tags"), required_keys=(SERVICE_TAG,))
        if tags and isinstance(tags.get(PROTOCOL_TAG), str) and tags[PROTOCOL_TAG] not in PROTOCOLS:
            v.add(f'{p}.tags["{PROTOCOL_TAG}"]', f"must be one of: {', '.join(PROTOCOLS)}")
        if m.get("protocol") not in (None, "") and m.get("protocol") not in PROTOCOLS:
            v.add(join(p, "protocol"), f"must be one of: {', '.join(PROTOCOLS)}")
        if port is not None:
            key = (str(m.get("address") or net.get("address")), port)
            if key in seen:
                v.add(join(p, "port"), f"port {port} is already used by networking.inbound[{seen[key]}]")
            seen[key] = i
    if gateway is not None:
        gw_tags = v.tags(gateway.get("tags"), "networking.gateway.tags", required_keys=(SERVICE_TAG,))
        if gw_tags and gw_tags.get(PROTOCOL_TAG, "tcp") != "tcp":
            v.add(f'networking.gateway.tags["{PROTOCOL_TAG}"]', "a delegated gateway is plain TCP to the mesh; "
                                                                "use tcp or leave the tag out")
        if gateway.get("type", "DELEGATED") != "DELEGATED":
            v.add("networking.gateway.type", "only DELEGATED gateways are supported")
    outbounds = v.sequence(net.get("outbound"), "networking.outbound")
    for _, p, m in v.objects(outbounds, "networking.outbound", _OUTBOUND):
        v.port(m.get("port"), join(p, "port"))
        v.ip(m.get("address"), join(p, "address"), required=False)
        if m.get("backendRef") is None:
            v.tags(m.get("tags"), join(p, "tags"), required_keys=(SERVICE_TAG,))
        elif v.mapping(m.get("backendRef"), join(p, "backendRef")) is not None:
            v.string(m["backendRef"].get("name"), join(p, "backendRef.name"))
            if m["backendRef"].get("kind", BACKEND_KINDS[0]) not in BACKEND_KINDS:
                v.add(join(p, "backendRef.kind"), f"must be one of: {', '.join(BACKEND_KINDS)}")
            if m.get("tags"):
                v.add(join(p, "backendRef"), "backendRef and tags cannot both be defined; keep one")
    if tproxy is not None:
        v.unknown(tproxy, _TPROXY, "networking.transparentProxying")
        v.port(tproxy.get("redirectPortInbound", 15006), "networking.transparentProxying.redirectPortInbound")
        v.port(tproxy.get("redirectPortOutbound", 15001), "networking.transparentProxying.redirectPortOutbound")
        _reachable_backends(v, tproxy.get("reachableBackends"), "networking.transparentProxying.reachableBackends")
        mode = tproxy.get("ipFamilyMode")
        if mode is not None and mode not in ("DualStack", "IPv4", "dualstack", "ipv4"):
            v.add("networking.transparentProxying.ipFamilyMode", "must be DualStack or IPv4")
    admin = v.mapping(net.get("admin"), "networking.admin", required=False)
    if admin is not None:
        v.unknown(admin, ("port",), "networking.admin")
        admin_port = v.port(admin.get("port"), "networking.admin.port", required=False)
        if admin_port is not None:
            for problem in _admin_clashes(admin_port, net, inbounds, outbounds):
                v.add("networking.admin.port", problem)
    return v.items


REACHABLE_KINDS = ("MeshService", "MeshExternalService")


def _reachable_backends(v: Violations, raw: Any, path: str) -> None:
    """Kuma's `{refs: [{kind, name, namespace, port, labels}]}`. dpagent resolves a ref by name only (a MeshService
    is a `kuma.io/service` value, a MeshExternalService its resource name): the other selectors are refused, not
    dropped, since dropping one would widen or narrow what the proxy reaches without saying so."""
    backends = v.mapping(raw, path, required=False)
    if backends is None:
        return
    v.unknown(backends, ("refs",), path)
    rp = join(path, "refs")
    for i, item in enumerate(v.sequence(backends.get("refs"), rp)):
        ref = v.mapping(item, f"{rp}[{i}]")
        if ref is None:
            continue
        p = f"{rp}[{i}]"
        v.unknown(ref, ("kind", "name", "namespace", "port", "labels"), p)
        if ref.get("kind") not in REACHABLE_KINDS:
            v.add(join(p, "kind"), f"must be one of: {', '.join(REACHABLE_KINDS)}")
        v.string(ref.get("name"), join(p, "name"))
        for key in ("namespace", "port", "labels"):
            if ref.get(key) not in (None, "", {}):
                v.add(join(p, key), "is not supported: dpagent selects reachable backends by name; remove it "
                                    "(a MeshService's name is its kuma.io/service value)")


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _on_loopback(address: Any) -> bool:
    """Whether a socket bound to `address` would take the admin listener's 127.0.0.1 port (a wildcard would)."""
    return address == ADMIN_ADDRESS or (isinstance(address, str) and _unspecified(address))


def _admin_clashes(port: int, net: Mapping[str, Any], inbounds: list[Any], outbounds: list[Any]) -> list[str]:
    """Envoy's admin API binds 127.0.0.1:<admin.port>; any inbound listener, application port or outbound
    listener already there would make Envoy (or the application) fail to bind."""
    out = []
    for i, ib in enumerate(inbounds):
        if not isinstance(ib, Mapping):
            continue
        listen = ib.get("address") or net.get("address")
        workload = (ib.get("serviceAddress") or WORKLOAD_ADDRESS, ib.get("servicePort") or ib.get("port"))
        if ib.get("port") == port and _on_loopback(listen):
            out.append(f"must differ from inbound: networking.inbound[{i}] listens on {listen}:{port}")
        elif workload[1] == port and _on_loopback(workload[0]):
            out.append(f"must differ from inbound: the application behind networking.inbound[{i}] listens on "
                       f"{workload[0]}:{port}")
    for i, ob in enumerate(outbounds):
        if isinstance(ob, Mapping) and ob.get("port") == port and _on_loopback(ob.get("address") or "127.0.0.1"):
            out.append(f"must differ from outbound: networking.outbound[{i}] listens on "
                       f"{ob.get('address') or '127.0.0.1'}:{port}")
    return out


def _validate_probe(v: Violations, doc: Any, path: str) -> None:
    """Kuma's serviceProbe: positive durations and thresholds (the project's duration units apply)."""
    probe = v.mapping(doc, path, required=False)
    if probe is None:
        return
    v.unknown(probe, _PROBE, path)
    for key in ("interval", "timeout"):
        if key in probe:
            value = probe[key]
            try:
                seconds = parse_duration(value) if isinstance(value, str) else -1.0
            except ValueError as exc:
                v.add(join(path, key), str(exc))
                continue
            if seconds <= 0:
                v.add(join(path, key), "must be a positive duration like 5s")
    for key in ("unhealthyThreshold", "healthyThreshold"):
        value = probe.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            v.add(join(path, key), "must be a positive whole number")
    v.mapping(probe.get("tcp"), join(path, "tcp"), required=False)


def parse_dataplane(doc: Any, what: str = "Dataplane") -> Dataplane:
    """Validate then convert; raises ValidationError listing every violation."""
    problems = validate_dataplane(doc)
    if problems:
        raise ValidationError(what, problems)
    return decode_dataplane(doc)


def decode_dataplane(doc: Mapping[str, Any]) -> Dataplane:
    """A Dataplane the store already accepted: decode it without validating again.

    Rules tighten between releases (names lost '_', tag values lost '/'), and a resource stored under the old
    rules must keep working until someone next writes it, as in Kuma; re-validating every read would instead
    take the whole mesh's configuration down on upgrade."""
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    return msgspec.convert(clean, Dataplane)


def to_dict(dp: Dataplane) -> dict[str, Any]:
    d = msgspec.to_builtins(dp)
    return {"type": "Dataplane", "mesh": d.pop("mesh"), "name": d.pop("name"), **{k: v for k, v in d.items()
                                                                                    if k != "type"}}
