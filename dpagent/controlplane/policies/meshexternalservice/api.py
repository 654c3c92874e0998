"""MeshExternalService's spec (reference kuma-policies.md §13.3): validation reporting every violation with its path,
and the generation-ready form (`ExternalService`) with its destination key, mesh hostname, VIP and resolved TLS
material. A resource, not a policy: no targetRef; policies reach it through `to[].targetRef.kind:
MeshExternalService`."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import Policy, check_envelope
from dpagent.controlplane.policies.targetref import MESH_EXTERNAL_SERVICE, TargetRef, extsvc_key
from dpagent.model.validation import HOST_RE, Violations, is_ip, join

KIND = MESH_EXTERNAL_SERVICE
PROTOCOLS = ("tcp", "grpc", "http", "http2")
MATCH_TYPES = ("HostnameGenerator",)
TLS_VERSIONS = ("TLSAuto", "TLS10", "TLS11", "TLS12", "TLS13")  # ordered
MODES = ("Secured", "SkipSAN", "SkipCA", "SkipAll")
SAN_TYPES = ("Exact", "Prefix")
DATA_SOURCE_KEYS = ("secret", "file", "inline", "inlineString")
MAX_PRIORITY = 128  # reference §13.3
# Kuma's default HostnameGenerator for external services (Universal) and its IPAM range.
HOSTNAME_SUFFIX = "extsvc.mesh.local"
VIP_CIDR = "242.0.0.0/8"
_SPEC = ("match", "endpoints", "extension", "tls")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True, forbid_unknown_fields=False):
    pass


class Match(_S):
    port: int
    type: str = "HostnameGenerator"
    protocol: str = "tcp"


class Endpoint(_S):
    address: str
    port: int
    priority: int = 0


class San(_S):
    value: str
    type: str = "Exact"


class Verification(_S):
    mode: str = "Secured"
    server_name: str = ""
    subject_alt_names: tuple[San, ...] = ()
    ca_cert: dict[str, str] | None = None
    client_cert: dict[str, str] | None = None
    client_key: dict[str, str] | None = None


class Version(_S):
    min: str = "TLSAuto"
    max: str = "TLSAuto"


class Tls(_S):
    enabled: bool = False
    allow_renegotiation: bool = False
    version: Version | None = None
    verification: Verification | None = None


class Spec(_S):
    match: Match
    endpoints: tuple[Endpoint, ...] = ()
    tls: Tls | None = None
    extension: dict[str, Any] | None = None


def validate(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a MeshExternalService document, with its path (`spec.endpoints[0].port`)."""
    v = Violations()
    spec = check_envelope(v, doc, KIND)
    if spec is None:
        return v.items
    v.unknown(spec, _SPEC, "spec")
    match = v.mapping(spec.get("match"), "spec.match")
    if match is not None:
        v.unknown(match, ("type", "port", "protocol"), "spec.match")
        kind = match.get("type", "HostnameGenerator")
        if kind not in MATCH_TYPES:
            v.add("spec.match.type", f"must be one of: {', '.join(MATCH_TYPES)}")
        v.port(match.get("port"), "spec.match.port")
        if match.get("protocol", "tcp") not in PROTOCOLS:
            v.add("spec.match.protocol", f"must be one of: {', '.join(PROTOCOLS)}")
    extension = spec.get("extension")
    if extension is not None:
        ext = v.mapping(extension, "spec.extension")
        if ext is not None:
            v.unknown(ext, ("type", "config"), "spec.extension")
            v.string(ext.get("type"), "spec.extension.type")
    endpoints = v.sequence(spec.get("endpoints"), "spec.endpoints")
    if not endpoints and extension is None:
        v.add("spec.endpoints", "must have at least one endpoint (or an extension)")
    for i, raw in enumerate(endpoints):
        p = f"spec.endpoints[{i}]"
        ep = v.mapping(raw, p)
        if ep is None:
            continue
        v.unknown(ep, ("address", "port", "priority"), p)
        v.address(ep.get("address"), join(p, "address"))
        v.port(ep.get("port"), join(p, "port"))
        prio = ep.get("priority")
        if prio is not None and (isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= MAX_PRIORITY):
            v.add(join(p, "priority"), f"must be a whole number in [0, {MAX_PRIORITY}]")
    tls = spec.get("tls")
    if tls is not None:
        _validate_tls(v, tls, "spec.tls")
    return v.items


def _validate_tls(v: Violations, doc: Any, path: str) -> None:
    tls = v.mapping(doc, path)
    if tls is None:
        return
    v.unknown(tls, ("enabled", "version", "allowRenegotiation", "verification"), path)
    for flag in ("enabled", "allowRenegotiation"):
        if flag in tls and not isinstance(tls[flag], bool):
            v.add(join(path, flag), "must be true or false")
    version = v.mapping(tls.get("version"), join(path, "version"), required=False)
    if version is not None:
        v.unknown(version, ("min", "max"), join(path, "version"))
        for bound in ("min", "max"):
            if bound in version and version[bound] not in TLS_VERSIONS:
                v.add(join(path, f"version.{bound}"), f"must be one of: {', '.join(TLS_VERSIONS)}")
        lo, hi = version.get("min", "TLSAuto"), version.get("max", "TLSAuto")
        if lo in TLS_VERSIONS[1:] and hi in TLS_VERSIONS[1:] and TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
            v.add(join(path, "version"), "min must not be higher than max")
    ver_path = join(path, "verification")
    ver = v.mapping(tls.get("verification"), ver_path, required=False)
    if ver is None:
        return
    v.unknown(ver, ("mode", "serverName", "subjectAltNames", "caCert", "clientCert", "clientKey"), ver_path)
    if "mode" in ver and ver["mode"] not in MODES:
        v.add(join(ver_path, "mode"), f"must be one of: {', '.join(MODES)}")
    server = ver.get("serverName")
    if server is not None and (not isinstance(server, str) or not HOST_RE.fullmatch(server)):
        v.add(join(ver_path, "serverName"), "must be a valid hostname")
    for i, raw in enumerate(v.sequence(ver.get("subjectAltNames"), join(ver_path, "subjectAltNames"))):
        p = f"{ver_path}.subjectAltNames[{i}]"
        san = v.mapping(raw, p)
        if san is None:
            continue
        v.unknown(san, ("type", "value"), p)
        if san.get("type", "Exact") not in SAN_TYPES:
            v.add(join(p, "type"), f"must be one of: {', '.join(SAN_TYPES)}")
        v.string(san.get("value"), join(p, "value"))
    for key in ("caCert", "clientCert", "clientKey"):
        if key in ver:
            _validate_data_source(v, ver[key], join(ver_path, key))
    if ("clientCert" in ver) != ("clientKey" in ver):
        v.add(join(ver_path, "clientCert" if "clientKey" in ver else "clientKey"),
              "clientCert and clientKey must be set together")


def _validate_data_source(v: Violations, doc: Any, path: str) -> None:
    src = v.mapping(doc, path)
    if src is None:
        return
    v.unknown(src, DATA_SOURCE_KEYS, path)
    present = [k for k in DATA_SOURCE_KEYS if k in src]
    if len(present) != 1:
        v.add(path, f"must have exactly one of: {', '.join(DATA_SOURCE_KEYS)}")
    for key in present:
        v.string(src[key], join(path, key))


# ---- generation-ready form -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalService:
    """One MeshExternalService as generation needs it. `key` is its destination key (the `service` its outbound
    resources carry, its cluster's name); `ca_pem` etc. are resolved data sources (None when not given);
    `problems` say why it is left out or what is ignored, for `inspect`."""

    name: str
    key: str
    hostname: str
    vip: str
    port: int
    protocol: str
    endpoints: tuple[Endpoint, ...]
    tls: Tls | None = None
    ca_pem: str | None = None
    client_cert_pem: str | None = None
    client_key_pem: str | None = None
    problems: tuple[str, ...] = ()
    usable: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Names every input of its generated resources: the memo key that lets proxies share them."""
        raw = msgspec.json.encode([self.name, self.vip, self.port, self.protocol, self.endpoints, self.tls,
                                   self.ca_pem, self.client_cert_pem, self.client_key_pem])
        return hashlib.sha256(raw).hexdigest()


def hostname(name: str) -> str:
    """Kuma's default HostnameGenerator output for an external service on Universal."""
    return f"{name}.{HOSTNAME_SUFFIX}"


def allocate_vips(names: Sequence[str], cidr: str = VIP_CIDR) -> dict[str, str]:
    """name → VIP, derived from the name's hash (linear probing on a clash, names in sorted order): pure and
    stable across restarts and CP replicas without a stored allocation, and a new external service never moves
    another one's address unless their hashes clash."""
    net = ipaddress.ip_network(cidr)
    size = net.num_addresses - 2
    used: set[int] = set()
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
        while slot in used:
            slot = (slot + 1) % size
        used.add(slot)
        out[name] = str(net.network_address + 1 + slot)
    return out


def resolved_spec(doc: Mapping[str, Any], load: Any) -> dict[str, Any]:
    """The spec with every TLS data source replaced by `{inlineString: PEM}`, or by `{error: why}` when `load`
    (controlplane/datasource.load) cannot resolve it: a file on the CP host is read once, when the resource is
    parsed, so generation stays free of I/O."""
    spec = dict(doc["spec"])
    tls = spec.get("tls")
    ver = (tls or {}).get("verification") if isinstance(tls, dict) else None
    if not isinstance(ver, dict):
        return spec
    ver = dict(ver)
    for key in ("caCert", "clientCert", "clientKey"):
        if key in ver:
            try:
                ver[key] = {"inlineString": load(ver[key])}
            except ValueError as e:
                ver[key] = {"error": str(e)}
    spec["tls"] = {**tls, "verification": ver}
    return spec


def to_policy(doc: Mapping[str, Any], spec: dict[str, Any]) -> Policy:
    """The registry's parsed form. The targetRef names the resource itself, so it selects no proxy (matching
    leaves it alone); `default` carries the resolved spec."""
    return Policy(kind=KIND, mesh=doc["mesh"], name=doc["name"], target_ref=TargetRef(kind=KIND, name=doc["name"]),
                  labels=dict(doc.get("labels") or {}), default=spec)


def _pem(source: Mapping[str, str] | None, what: str, problems: list[str]) -> str | None:
    if source is None:
        return None
    if "error" in source:
        problems.append(f"{what}: {source['error']}")
        return None
    return source.get("inlineString")


def external_services(policies: Sequence[Policy]) -> tuple[ExternalService, ...]:
    """Every MeshExternalService of a mesh, sorted by name, with its VIP."""
    vips = allocate_vips([p.name for p in policies])
    out = []
    for p in sorted(policies, key=lambda p: p.name):
        spec = msgspec.convert(p.default or {}, Spec)
        problems: list[str] = []
        ver = spec.tls.verification if spec.tls is not None else None
        ca = _pem(ver.ca_cert if ver else None, "tls.verification.caCert", problems)
        cert = _pem(ver.client_cert if ver else None, "tls.verification.clientCert", problems)
        key = _pem(ver.client_key if ver else None, "tls.verification.clientKey", problems)
        # TLS without the material it names would verify nothing or fail every handshake: leave it out instead.
        usable = bool(spec.endpoints) and not (problems and spec.tls is not None and spec.tls.enabled)
        if spec.extension is not None:
            problems.append(f"extension {spec.extension.get('type')!r} is not supported; only endpoints are used")
        if not usable:
            problems.append("no cluster is generated for it")
        out.append(ExternalService(
            name=p.name, key=extsvc_key(p.name), hostname=hostname(p.name), vip=vips[p.name], port=spec.match.port,
            protocol=spec.match.protocol, endpoints=spec.endpoints, tls=spec.tls, ca_pem=ca, client_cert_pem=cert,
            client_key_pem=key, problems=(f"MeshExternalService {p.name}: {'; '.join(problems)}",) if problems else (),
            usable=usable, labels=dict(p.labels)))
    return tuple(out)


def endpoint_is_ip(ep: Endpoint) -> bool:
    return is_ip(ep.address)
