"""The universal `Mesh` resource: schema, collect-every-violation validation, and the mTLS helpers xDS needs.

Only `mtls` drives behaviour today; the other Kuma Mesh sections are accepted (so existing Kuma YAML applies
unchanged) and kept verbatim, but nothing reads them yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.durations import parse_duration
from dpagent.errors import ValidationError
from dpagent.model.validation import Violations, join

BACKEND_TYPES = ("builtin", "provided")
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


_TOP = ("type", "name", "labels", "mtls", "logging", "tracing", "metrics", "routing", "networking", "constraints",
        "skipCreatingInitialPolicies", "meshServices", "creationTime", "modificationTime")
_MTLS = ("enabledBackend", "backends", "skipValidation")
_BACKEND = ("name", "type", "dpCert", "conf", "mode")
_IGNORED_OBJECTS = ("logging", "tracing", "metrics", "routing", "networking", "constraints", "meshServices")


def validate_mesh(doc: Any) -> list[tuple[str, str]]:
    """Every violation in a decoded Mesh document, with Kuma-style paths."""
    v = Violations()
    top = v.mapping(doc, "")
    if top is None:
        return v.items
    v.unknown(top, _TOP, "")
    if top.get("type", "Mesh") != "Mesh":
        v.add("type", f"must be Mesh, not {top.get('type')!r}")
    v.name(top.get("name"), "name")
    v.tags(top.get("labels"), "labels")
    for key in _IGNORED_OBJECTS:
        v.mapping(top.get(key), key, required=False)
    skip = v.sequence(top.get("skipCreatingInitialPolicies"), "skipCreatingInitialPolicies")
    for i, item in enumerate(skip):
        v.string(item, f"skipCreatingInitialPolicies[{i}]")
    mtls = v.mapping(top.get("mtls"), "mtls", required=False)
    if mtls is not None:
        _validate_mtls(v, mtls)
    return v.items


def _validate_mtls(v: Violations, mtls: Mapping[str, Any]) -> None:
    v.unknown(mtls, _MTLS, "mtls")
    if "skipValidation" in mtls and not isinstance(mtls["skipValidation"], bool):
        v.add("mtls.skipValidation", "must be a boolean")
    names: dict[str, int] = {}
    for i, raw in enumerate(v.sequence(mtls.get("backends"), "mtls.backends")):
        p = f"mtls.backends[{i}]"
        b = v.mapping(raw, p)
        if b is None:
            continue
        v.unknown(b, _BACKEND, p)
        name = v.name(b.get("name"), join(p, "name"))
        if name is not None:
            if name in names:
                v.add(join(p, "name"), f"'name' has to be unique: already used by mtls.backends[{names[name]}]")
            names.setdefault(name, i)
        kind = b.get("type")
        if kind not in BACKEND_TYPES:
            v.add(join(p, "type"), f"must be one of: {', '.join(BACKEND_TYPES)}")
        if b.get("mode") not in (None, "STRICT"):
            v.add(join(p, "mode"), "only STRICT is supported (PERMISSIVE would accept plaintext)")
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
    clean = {k: val for k, val in doc.items() if k not in ("creationTime", "modificationTime")}
    return msgspec.convert(clean, Mesh)


def enabled_backend(mesh: Mesh) -> MtlsBackend | None:
    """The backend that issues certificates, or None when mTLS is off (no enabledBackend)."""
    if mesh.mtls is None or not mesh.mtls.enabled_backend:
        return None
    return next((b for b in mesh.mtls.backends if b.name == mesh.mtls.enabled_backend), None)


def mtls_enabled(mesh: Mesh) -> bool:
    return enabled_backend(mesh) is not None


def cert_lifetime_seconds(mesh: Mesh) -> float:
    """Workload certificate lifetime from the enabled backend's dpCert rotation (Kuma 2.x default: 24h)."""
    backend = enabled_backend(mesh)
    if backend is None or backend.dp_cert is None or backend.dp_cert.rotation is None:
        return DEFAULT_CERT_LIFETIME
    return parse_duration(backend.dp_cert.rotation.expiration)
