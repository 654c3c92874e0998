"""Mesh validation (every violation, Kuma paths) and the mTLS helpers."""

from __future__ import annotations

from typing import Any

import pytest

from dpagent.errors import ValidationError
from dpagent.model.mesh import cert_lifetime_seconds, enabled_backend, mtls_enabled, parse_mesh, validate_mesh
from dpagent.model.validation import NAME_RULE


def mesh(**mtls: Any) -> dict[str, Any]:
    return {"type": "Mesh", "name": "default", **({"mtls": mtls} if mtls else {})}


def builtin(name: str = "ca-1", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "builtin", **kw}


def test_minimal_and_ignored_sections() -> None:
    doc = {**mesh(), "logging": {"backends": []}, "tracing": {}, "metrics": {"enabledBackend": "p"},
           "routing": {"localityAwareLoadBalancing": True}, "networking": {"outbound": {"passthrough": True}},
           "constraints": {},
           "skipCreatingInitialPolicies": ["*"], "meshServices": {"mode": "Disabled"},
           "creationTime": "2024-01-01T00:00:00Z"}
    assert validate_mesh(doc) == []
    m = parse_mesh(doc)
    assert not mtls_enabled(m) and enabled_backend(m) is None and cert_lifetime_seconds(m) == 24 * 3600


def test_mtls_helpers() -> None:
    m = parse_mesh(mesh(enabledBackend="ca-2", backends=[
        builtin("ca-1"), builtin("ca-2", dpCert={"rotation": {"expiration": "1h30m"}})]))
    assert mtls_enabled(m)
    backend = enabled_backend(m)
    assert backend is not None and backend.name == "ca-2"
    assert cert_lifetime_seconds(m) == 5400
    assert cert_lifetime_seconds(parse_mesh(mesh(enabledBackend="ca-1", backends=[builtin()]))) == 86400
    assert not mtls_enabled(parse_mesh(mesh(backends=[builtin()])))


def test_provided_sources() -> None:
    for src in ({"file": "/etc/ca.pem"}, {"inline": "LS0t"}, {"inlineString": "-----BEGIN"}):
        doc = mesh(enabledBackend="p", backends=[{"name": "p", "type": "provided", "conf": {"cert": src, "key": src}}])
        assert validate_mesh(doc) == [], src


BAD: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("not an object", [], [("$", "must be an object, not a list")]),
    ("wrong type", {"type": "Dataplane", "name": "default"}, [("type", "must be Mesh, not 'Dataplane'")]),
    ("no name", {"type": "Mesh"}, [("name", "must be defined")]),
    ("unknown top", {**mesh(), "foo": 1}, [("foo", "unknown field (expected one of: constraints, creationTime, "
                                                  "labels, logging, meshServices, metrics, modificationTime, mtls, "
                                                  "name, networking, routing, skipCreatingInitialPolicies, tracing, "
                                                  "type)")]),
    ("ignored section not object", {**mesh(), "tracing": "x"}, [("tracing", "must be an object, not a string")]),
    ("skip list items", {**mesh(), "skipCreatingInitialPolicies": [1]},
     [("skipCreatingInitialPolicies[0]", "must be a string, not a number")]),
    ("mtls unknown", mesh(foo=1), [("mtls.foo", "unknown field (expected one of: backends, enabledBackend, "
                                               "skipValidation)")]),
    ("skipValidation", mesh(skipValidation="yes"), [("mtls.skipValidation", "must be a boolean")]),
    ("enabled missing", mesh(enabledBackend="nope", backends=[builtin()]),
     [("mtls.enabledBackend", "has to be set to one of the backends in the mesh")]),
    ("enabled not string", mesh(enabledBackend=3, backends=[builtin()]), [("mtls.enabledBackend", "must be a string")]),
    ("duplicate names", mesh(backends=[builtin(), builtin()]),
     [("mtls.backends[1].name", "'name' has to be unique: already used by mtls.backends[0]")]),
    ("backend not object", mesh(backends=["x"]), [("mtls.backends[0]", "must be an object, not a string")]),
    ("backend unknown", mesh(backends=[builtin(foo=1)]),
     [("mtls.backends[0].foo", "unknown field (expected one of: conf, dpCert, mode, name, type)")]),
    ("bad type", mesh(backends=[{"name": "a", "type": "vault"}]),
     [("mtls.backends[0].type", "must be one of: builtin, provided")]),
    ("no name", mesh(backends=[{"type": "builtin"}]), [("mtls.backends[0].name", "must be defined")]),
    ("bad mode", mesh(backends=[builtin(mode="Lenient")]),
     [("mtls.backends[0].mode", "must be one of: STRICT, PERMISSIVE")]),
    ("short expiration", mesh(backends=[builtin(dpCert={"rotation": {"expiration": "10s"}})]),
     [("mtls.backends[0].dpCert.rotation.expiration", "must be at least 30s")]),
    ("bad expiration", mesh(backends=[builtin(dpCert={"rotation": {"expiration": "soon"}})]),
     [("mtls.backends[0].dpCert.rotation.expiration",
       "'soon' is not a duration; use a form like 30s, 5m, 1h30m, 500ms, 7d, 2w or 10y")]),
    ("expiration number", mesh(backends=[builtin(dpCert={"rotation": {"expiration": 60}})]),
     [("mtls.backends[0].dpCert.rotation.expiration", "must be a duration string like 24h or 30m")]),
    ("dpCert unknown", mesh(backends=[builtin(dpCert={"x": 1, "rotation": {"y": 2}})]),
     [("mtls.backends[0].dpCert.x", "unknown field (expected one of: requestTimeout, rotation)"),
      ("mtls.backends[0].dpCert.rotation.y", "unknown field (expected one of: expiration)")]),
    ("provided no conf", mesh(backends=[{"name": "p", "type": "provided"}]),
     [("mtls.backends[0].conf", "must be defined")]),
    ("provided missing key", mesh(backends=[{"name": "p", "type": "provided", "conf": {"cert": {"file": "a"}}}]),
     [("mtls.backends[0].conf.key", "must be defined")]),
    ("provided two sources", mesh(backends=[{"name": "p", "type": "provided", "conf": {
        "cert": {"file": "a", "secret": "b"}, "key": {"bogus": "x"}}}]),
     [("mtls.backends[0].conf.cert", "must have exactly one of: secret, file, inline, inlineString"),
      ("mtls.backends[0].conf.key.bogus", "unknown field (expected one of: file, inline, inlineString, secret)"),
      ("mtls.backends[0].conf.key", "must have exactly one of: secret, file, inline, inlineString")]),
    ("provided empty source", mesh(backends=[{"name": "p", "type": "provided", "conf": {
        "cert": {"file": ""}, "key": {"secret": "Not_A_Name"}, "extra": 1}}]),
     [("mtls.backends[0].conf.cert.file", "must be defined"),
      ("mtls.backends[0].conf.key.secret", NAME_RULE),
      ("mtls.backends[0].conf.extra", "unknown field (expected one of: cert, key)")]),
    ("builtin conf", mesh(backends=[builtin(conf={"caCert": {"RSAbits": 2048, "expiration": "x"}, "y": 1})]),
     [("mtls.backends[0].conf.y", "unknown field (expected one of: caCert)"),
      ("mtls.backends[0].conf.caCert.expiration",
       "'x' is not a duration; use a form like 30s, 5m, 1h30m, 500ms, 7d, 2w or 10y")]),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in BAD], ids=[c for c, _, _ in BAD])
def test_violations(doc: Any, expected: list[tuple[str, str]]) -> None:
    assert validate_mesh(doc) == expected


def test_collects_every_violation_and_parse_raises() -> None:
    doc = {"type": "Mesh", "mtls": {"enabledBackend": "x", "backends": [builtin(dpCert={"rotation": {
        "expiration": "1s"}}), {"name": "ca-1", "type": "nope"}]}}
    problems = validate_mesh(doc)
    assert [p for p, _ in problems] == ["name", "mtls.backends[0].dpCert.rotation.expiration", "mtls.backends[1].name",
                                        "mtls.backends[1].type", "mtls.enabledBackend"]
    with pytest.raises(ValidationError) as err:
        parse_mesh(doc)
    assert err.value.violations == problems
