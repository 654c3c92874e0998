"""The universal `Dataplane` resource (Kuma's YAML, reference kuma-dp.md §8): schema, validation, typed view."""

from __future__ import annotations

from typing import Any

import msgspec

from dpagent.errors import ValidationError
from dpagent.model.validation import Violations, join

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
PROTOCOLS = ("http", "http2", "grpc", "tcp", "kafka")


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


class TransparentProxying(_S):
    redirect_port_inbound: int = 15006
    redirect_port_outbound: int = 15001
    reachable_services: list[str] = []
    direct_access_services: list[str] = []
    ip_family_mode: str = ""


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
_TPROXY = ("redirectPortInbound", "redirectPortOutbound", "reachableServices", "directAccessServices",
           "ipFamilyMode", "reachableBackends")


def validate_dataplane(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded Dataplane document, with Kuma-style paths."""
    v = Violations()
    top = v.mapping(doc, "")
    if top is None:
        return v.items
    v.unknown(top, _TOP, "")
    if top.get("type", "Dataplane") != "Dataplane":
        v.add("type", f"must be Dataplane, not {top.get('type')!r}")
    v.name(top.get("mesh"), "mesh")
    v.name(top.get("name"), "name")
    v.tags(top.get("labels"), "labels")
    net = v.mapping(top.get("networking"), "networking")
    if net is None:
        return v.items
    v.unknown(net, _NET, "networking")
    v.address(net.get("address"), "networking.address")
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
    for i, ib in enumerate(inbounds):
        p = f"networking.inbound[{i}]"
        m = v.mapping(ib, p)
        if m is None:
            continue
        v.unknown(m, _INBOUND, p)
        port = v.port(m.get("port"), join(p, "port"))
        v.port(m.get("servicePort"), join(p, "servicePort"), required=False)
        v.ip(m.get("serviceAddress"), join(p, "serviceAddress"), required=False)
        v.ip(m.get("address"), join(p, "address"), required=False)
        tags = v.tags(m.get("tags"), join(p, "tags"), required_keys=(SERVICE_TAG,))
        if tags and isinstance(tags.get(PROTOCOL_TAG), str) and tags[PROTOCOL_TAG] not in PROTOCOLS:
            v.add(f'{p}.tags["{PROTOCOL_TAG}"]', f"must be one of: {', '.join(PROTOCOLS)}")
        if port is not None:
            key = (str(m.get("address") or net.get("address")), port)
            if key in seen:
                v.add(join(p, "port"), f"port {port} is already used by networking.inbound[{seen[key]}]")
            seen[key] = i
    if gateway is not None:
        v.tags(gateway.get("tags"), "networking.gateway.tags", required_keys=(SERVICE_TAG,))
        if gateway.get("type", "DELEGATED") != "DELEGATED":
            v.add("networking.gateway.type", "only DELEGATED gateways are supported")
    outbounds = v.sequence(net.get("outbound"), "networking.outbound")
    for i, ob in enumerate(outbounds):
        p = f"networking.outbound[{i}]"
        m = v.mapping(ob, p)
        if m is None:
            continue
        v.unknown(m, _OUTBOUND, p)
        v.port(m.get("port"), join(p, "port"))
        v.ip(m.get("address"), join(p, "address"), required=False)
        if m.get("backendRef") is None:
            v.tags(m.get("tags"), join(p, "tags"), required_keys=(SERVICE_TAG,))
        elif v.mapping(m.get("backendRef"), join(p, "backendRef")) is not None:
            v.string(m["backendRef"].get("name"), join(p, "backendRef.name"))
    if tproxy is not None:
        v.unknown(tproxy, _TPROXY, "networking.transparentProxying")
        v.port(tproxy.get("redirectPortInbound", 15006), "networking.transparentProxying.redirectPortInbound")
        v.port(tproxy.get("redirectPortOutbound", 15001), "networking.transparentProxying.redirectPortOutbound")
        mode = tproxy.get("ipFamilyMode")
        if mode is not None and mode not in ("DualStack", "IPv4", "dualstack", "ipv4"):
            v.add("networking.transparentProxying.ipFamilyMode", "must be DualStack or IPv4")
    admin = v.mapping(net.get("admin"), "networking.admin", required=False)
    if admin is not None:
        v.port(admin.get("port"), "networking.admin.port", required=False)
    return v.items


def parse_dataplane(doc: Any, what: str = "Dataplane") -> Dataplane:
    """Validate then convert; raises ValidationError listing every violation."""
    problems = validate_dataplane(doc)
    if problems:
        raise ValidationError(what, problems)
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    return msgspec.convert(clean, Dataplane)


def to_dict(dp: Dataplane) -> dict[str, Any]:
    d = msgspec.to_builtins(dp)
    return {"type": "Dataplane", "mesh": d.pop("mesh"), "name": d.pop("name"), **{k: v for k, v in d.items()
                                                                                    if k != "type"}}
