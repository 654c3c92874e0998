"""The universal `Mesh` resource: schema, collect-every-violation validation, and the mTLS helpers xDS needs.

Only `mtls` drives behaviour today; the other Kuma Mesh sections are accepted (so existing Kuma YAML applies
unchanged) and kept verbatim, but nothing reads them yet. `logging` and `routing` are still checked by Kuma's rules,
so a Mesh we store is one Kuma would store too.

Several CA backends are allowed (Kuma OSS allows one): rotating the CA means adding a backend and switching
`enabledBackend`, which needs both present at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec

from dpagent.durations import parse_duration
from dpagent.errors import ValidationError
from dpagent.model.validation import Violations, is_ip, join

BACKEND_TYPES = ("builtin", "provided")
MTLS_MODES = ("STRICT", "PERMISSIVE")
DEFAULT_CERT_LIFETIME = 24 * 3600.0
MIN_CERT_LIFETIME = 30.0
DATA_SOURCE_KEYS = ("secret", "file", "inline", "inlineString")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False):
    pass


class Rotation(_S):
    expiration: str = "24h"


class DpCert(_S):
    rotation: Rotation | None = None


class MtlsBackend(_S):
    name: str
    type: str = "builtin"
    dp_cert: DpCert | None = None
    conf: dict[str, Any] | None = None
    mode: str = ""


class Mtls(_S):
    enabled_backend: str = ""
    backends: list[MtlsBackend] = []
    skip_validation: bool = False


class Mesh(_S):
    name: str
    type: str = "Mesh"
    labels: dict[str, str] = {}
    mtls: Mtls | None = None
    logging: dict[str, Any] | None = None
    tracing: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None
    networking: dict[str, Any] | None = None
    constraints: dict[str, Any] | None = None
    skip_creating_initial_policies: list[str] = []
    mesh_services: dict[str, Any] | None = None
    # Set by the CP, never by users (validation refuses the key): mTLS was just turned on and not every connected
    # proxy holds a mesh certificate yet. Inbounds then accept both plaintext and mTLS and clients stay plaintext,
    # so no call fails while certificates arrive; the CP clears it once every proxy has one.
    mtls_staging: bool = False


_TOP = ("type", "name", "labels", "mtls", "logging", "tracing", "metrics", "routing", "networking", "constraints",
        "skipCreatingInitialPolicies", "meshServices", "creationTime", "modificationTime")
_MTLS = ("enabledBackend", "backends", "skipValidation")
_BACKEND = ("name", "type", "dpCert", "conf", "mode")
_IGNORED_OBJECTS = ("tracing", "metrics", "networking", "constraints", "meshServices")
_LOGGING = ("defaultBackend", "backends")
_LOG_BACKEND = ("name", "type", "format", "conf")
_LOG_CONF = {"file": ("path",), "tcp": ("address",)}
_ROUTING = ("localityAwareLoadBalancing", "zoneEgress", "defaultForbidMeshExternalServiceAccess")


def validate_mesh(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded Mesh document, with Kuma-style paths."""
    v = Violations()
    top = v.document(doc, "Mesh", _TOP)
    if top is None:
        return v.items
    v.name(top.get("name"), "name")
    v.labels(top.get("labels"), None)
    for key in _IGNORED_OBJECTS:
        v.mapping(top.get(key), key, required=False)
    skip = v.sequence(top.get("skipCreatingInitialPolicies"), "skipCreatingInitialPolicies")
    for i, item in enumerate(skip):
        v.string(item, f"skipCreatingInitialPolicies[{i}]")
    networking = top.get("networking")
    outbound = networking.get("outbound") if isinstance(networking, dict) else None
    if outbound is not None and v.mapping(outbound, "networking.outbound") is not None \
            and "passthrough" in outbound and not isinstance(outbound["passthrough"], bool):
        v.add("networking.outbound.passthrough", "must be true or false")
    mtls = v.mapping(top.get("mtls"), "mtls", required=False)
    if mtls is not None:
        _validate_mtls(v, mtls)
    logging = v.mapping(top.get("logging"), "logging", required=False)
    if logging is not None:
        _validate_logging(v, logging)
    routing = v.mapping(top.get("routing"), "routing", required=False)
    if routing is not None:
        v.unknown(routing, _ROUTING, "routing")
        for key in _ROUTING:
            if key in routing and not isinstance(routing[key], bool):
                v.add(join("routing", key), "must be true or false")
        if routing.get("zoneEgress") is True and not (mtls or {}).get("enabledBackend"):
            v.add("mtls", "must be enabled (set mtls.enabledBackend) when routing.zoneEgress is true: zone egress "
                          "only carries mTLS traffic")
    return v.items


def _backends(v: Violations, raw: Any, path: str, fields: tuple[str, ...], read_name: Callable[[Any, str], str | None],
              names: dict[str, int]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each backend of the list at `path` (with its path), after the checks every Mesh backend list shares: known
    fields and a name unique in the list. `names` collects name → first index, for the section's default/enabled
    backend to be checked against."""
    for i, p, b in v.objects(v.sequence(raw, path), path, fields):
        name = read_name(b.get("name"), join(p, "name"))
        if name is not None:
            if name in names:
                v.add(join(p, "name"), f"'name' has to be unique: already used by {path}[{names[name]}]")
            names.setdefault(name, i)
        yield p, b


def _validate_logging(v: Violations, logging: Mapping[str, Any]) -> None:
    """Kuma's checks: unique backend names, a known type, `file` needs a path, `tcp` a HOST:PORT address."""
    v.unknown(logging, _LOGGING, "logging")
    names: dict[str, int] = {}
    for p, b in _backends(v, logging.get("backends"), "logging.backends", _LOG_BACKEND, v.string, names):
        if b.get("format") is not None:
            v.string(b.get("format"), join(p, "format"))
        kind = b.get("type")
        if kind not in _LOG_CONF:
            v.add(join(p, "type"), f"must be one of: {', '.join(_LOG_CONF)}")
            continue
        conf = v.mapping(b.get("conf"), join(p, "conf"))
        if conf is None:
            continue
        v.unknown(conf, _LOG_CONF[kind], join(p, "conf"))
        if kind == "file":
            v.string(conf.get("path"), join(p, "conf.path"))
        else:
            address = v.string(conf.get("address"), join(p, "conf.address"))
            if address is not None and not _host_port(address):
                v.add(join(p, "conf.address"), f"{address!r} must be HOST:PORT, e.g. 127.0.0.1:5000 or "
                                               "[::1]:5000 or logs.example.com:5000")
    default = logging.get("defaultBackend")
    if default not in (None, "") and default not in names:
        v.add("logging.defaultBackend", "has to be set to one of the logging backends in the mesh")


def _host_port(address: str) -> bool:
    """HOST:PORT as Go's net.SplitHostPort reads it: IPv6 hosts in brackets, both parts present, port 0-65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return False
    if host.startswith("["):
        return host.endswith("]") and is_ip(host[1:-1])
    return ":" not in host and "[" not in host and "]" not in host


def _validate_mtls(v: Violations, mtls: Mapping[str, Any]) -> None:
    v.unknown(mtls, _MTLS, "mtls")
    if "skipValidation" in mtls and not isinstance(mtls["skipValidation"], bool):
        v.add("mtls.skipValidation", "must be a boolean")
    names: dict[str, int] = {}
    for p, b in _backends(v, mtls.get("backends"), "mtls.backends", _BACKEND, v.name, names):
        kind = b.get("type")
        if kind not in BACKEND_TYPES:
            v.add(join(p, "type"), f"must be one of: {', '.join(BACKEND_TYPES)}")
        if b.get("mode") not in (None, *MTLS_MODES):
            v.add(join(p, "mode"), f"must be one of: {', '.join(MTLS_MODES)}")
        _validate_dp_cert(v, b.get("dpCert"), join(p, "dpCert"))
        conf = v.mapping(b.get("conf"), join(p, "conf"), required=kind == "provided")
        if conf is not None and kind == "provided":
            for key in ("cert", "key"):
                _validate_data_source(v, conf.get(key), join(p, f"conf.{key}"))
            v.unknown(conf, ("cert", "key"), join(p, "conf"))
        elif conf is not None and kind == "builtin":
            v.unknown(conf, ("caCert",), join(p, "conf"))
            ca = v.mapping(conf.get("caCert"), join(p, "conf.caCert"), required=False)
            if ca is not None:
                v.unknown(ca, ("RSAbits", "expiration"), join(p, "conf.caCert"))
                if "expiration" in ca:
                    _duration(v, ca["expiration"], join(p, "conf.caCert.expiration"))
    enabled = mtls.get("enabledBackend")
    if enabled not in (None, ""):
        if not isinstance(enabled, str):
            v.add("mtls.enabledBackend", "must be a string")
        elif enabled not in names:
            v.add("mtls.enabledBackend", "has to be set to one of the backends in the mesh")


def _validate_dp_cert(v: Violations, doc: Any, path: str) -> None:
    dp_cert = v.mapping(doc, path, required=False)
    if dp_cert is None:
        return
    v.unknown(dp_cert, ("rotation", "requestTimeout"), path)
    rotation = v.mapping(dp_cert.get("rotation"), join(path, "rotation"), required=False)
    if rotation is None:
        return
    v.unknown(rotation, ("expiration",), join(path, "rotation"))
    if "expiration" not in rotation:
        return
    seconds = _duration(v, rotation["expiration"], join(path, "rotation.expiration"))
    if seconds is not None and seconds < MIN_CERT_LIFETIME:
        v.add(join(path, "rotation.expiration"), f"must be at least {MIN_CERT_LIFETIME:g}s")


def _validate_data_source(v: Violations, doc: Any, path: str) -> None:
    src = v.mapping(doc, path)
    if src is None:
        return
    present = [k for k in DATA_SOURCE_KEYS if k in src]
    v.unknown(src, DATA_SOURCE_KEYS, path)
    if len(present) != 1:
        v.add(path, f"must have exactly one of: {', '.join(DATA_SOURCE_KEYS)}")
    for key in present:
        if key == "secret":
            v.name(src[key], join(path, key))  # a Secret of this mesh; that it exists is checked on apply
        else:
            v.string(src[key], join(path, key))


def _duration(v: Violations, value: Any, path: str) -> float | None:
    if not isinstance(value, str):
        v.add(path, "must be a duration string like 24h or 30m")
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        v.add(path, str(exc))
        return None


def parse_mesh(doc: Any, what: str = "Mesh") -> Mesh:
    """Validate then convert; raises ValidationError listing every violation."""
    problems = validate_mesh(doc)
    if problems:
        raise ValidationError(what, problems)
    return decode_mesh(doc)


def decode_mesh(doc: Mapping[str, Any]) -> Mesh:
    """A Mesh the store already accepted: decode only (see `decode_dataplane` for why stored documents are not
    validated again)."""
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    return msgspec.convert(clean, Mesh)


def enabled_backend(mesh: Mesh) -> MtlsBackend | None:
    """The backend that issues certificates, or None when mTLS is off (no enabledBackend)."""
    if mesh.mtls is None or not mesh.mtls.enabled_backend:
        return None
    return next((b for b in mesh.mtls.backends if b.name == mesh.mtls.enabled_backend), None)


def mtls_enabled(mesh: Mesh) -> bool:
    return enabled_backend(mesh) is not None


def mtls_permissive(mesh: Mesh) -> bool:
    """The enabled backend's mode is PERMISSIVE (inbounds also take plaintext from clients outside the mesh: the
    migration step before STRICT), or mTLS is being turned on (see `Mesh.mtls_staging`). A MeshTLS policy may
    override the mode per proxy once staging is over."""
    backend = enabled_backend(mesh)
    return backend is not None and (backend.mode == "PERMISSIVE" or mesh.mtls_staging)


def client_mtls(mesh: Mesh) -> bool:
    """Whether proxies call their peers over mTLS: mTLS is on and every connected proxy holds a mesh certificate."""
    return mtls_enabled(mesh) and not mesh.mtls_staging


def cert_lifetime_seconds(mesh: Mesh) -> float:
    """Workload certificate lifetime from the enabled backend's dpCert rotation (Kuma 2.x default: 24h)."""
    backend = enabled_backend(mesh)
    if backend is None or backend.dp_cert is None or backend.dp_cert.rotation is None:
        return DEFAULT_CERT_LIFETIME
    return parse_duration(backend.dp_cert.rotation.expiration)
