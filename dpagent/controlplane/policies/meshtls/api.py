"""MeshTLS's spec: `default.mode`, `default.tlsVersion {min, max}` and `default.tlsCiphers`, typed, with
validation. Versions and ciphers change what every mesh peer must speak, so (as in Kuma) only a policy whose
top-level targetRef is the whole Mesh may set them; `validate_top` reports each offending entry with its path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import FROM, RULES, Shape
from dpagent.controlplane.policies.targetref import DATAPLANE, MESH, MESH_SUBSET
from dpagent.model.validation import Violations, join

KIND = "MeshTLS"
SHAPE = Shape(sections=(FROM, RULES), top_kinds=(MESH, MESH_SUBSET, DATAPLANE), from_kinds=(MESH,),
              required_one_of=(FROM, RULES))
MODES = ("Strict", "Permissive")
VERSIONS = ("TLSAuto", "TLS10", "TLS11", "TLS12", "TLS13")  # ordered: TLSAuto is Envoy's default
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
           "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305")
MESH_ONLY = ("tlsVersion", "tlsCiphers")


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class Version(_S):
    min: str | None = None
    max: str | None = None


class Conf(_S):
    mode: str | None = None
    tls_version: Version | None = None
    tls_ciphers: tuple[str, ...] | None = None


def parse_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("mode", *MESH_ONLY), path)
    if "mode" in conf and conf["mode"] not in MODES:
        v.add(join(path, "mode"), f"must be one of: {', '.join(MODES)}")
    version = v.mapping(conf.get("tlsVersion"), join(path, "tlsVersion"), required=False)
    if version is not None:
        v.unknown(version, ("min", "max"), join(path, "tlsVersion"))
        for bound in ("min", "max"):
            if bound in version and version[bound] not in VERSIONS:
                v.add(join(path, f"tlsVersion.{bound}"), f"must be one of: {', '.join(VERSIONS)}")
        lo, hi = version.get("min"), version.get("max")
        if lo in VERSIONS[1:] and hi in VERSIONS[1:] and VERSIONS.index(lo) > VERSIONS.index(hi):
            v.add(join(path, "tlsVersion"), "min must not be greater than max")
    if "tlsCiphers" in conf:
        ciphers = v.sequence(conf["tlsCiphers"], join(path, "tlsCiphers"))
        for i, c in enumerate(ciphers):
            if c not in CIPHERS:
                v.add(join(path, f"tlsCiphers[{i}]"), f"must be one of: {', '.join(CIPHERS)}")
        if len(set(map(str, ciphers))) != len(ciphers):
            v.add(join(path, "tlsCiphers"), "must not repeat a cipher")


def validate_top(doc: Any) -> list[tuple[str, str]]:
    """tlsVersion / tlsCiphers under a policy whose top-level targetRef is not Mesh (absent means Mesh)."""
    spec = doc.get("spec") if isinstance(doc, Mapping) else None
    if not isinstance(spec, Mapping):
        return []
    top = spec.get("targetRef")
    kind = top.get("kind", MESH) if isinstance(top, Mapping) else MESH
    if kind == MESH:
        return []
    out: list[tuple[str, str]] = []
    for section in (FROM, RULES):
        items = spec.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            conf = item.get("default") if isinstance(item, Mapping) else None
            for key in MESH_ONLY:
                if isinstance(conf, Mapping) and key in conf:
                    out.append((f"spec.{section}[{i}].default.{key}",
                                f"is allowed only when the top-level targetRef is Mesh (it is {kind})"))
    return out
