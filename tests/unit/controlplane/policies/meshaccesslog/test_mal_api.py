"""MeshAccessLog validation: Kuma's Universal YAML accepted unchanged, bad specs refused with every violation at its
exact path, and how matched policies become backends (to[] replaced by priority, inbound entries added up)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from dpagent.controlplane.policies.matching import match
from dpagent.controlplane.policies.meshaccesslog import AccessLogRules, MeshAccessLogPlugin
from dpagent.controlplane.policies.meshaccesslog.api import split_host_port
from dpagent.model.dataplane import parse_dataplane

PLUGIN = MeshAccessLogPlugin()

# The first document is reference kuma-policies.md §15 byte for byte; the others use the backend shapes Kuma documents.
KUMA_YAML = """
type: MeshAccessLog
name: al-all
mesh: default
spec:
  to:
    - targetRef: {kind: Mesh}
      default:
        backends:                                       # req
          - type: File                                  # req
            file: {path: /tmp/access.log, format: {type: Json, json: [{key: start, value: "%START_TIME%"}, {key: src, value: "%KUMA_SOURCE_SERVICE%"}]}}
          - type: Tcp
            tcp: {address: "10.0.0.5:5000", format: {type: Plain, plain: "[%START_TIME%] %KUMA_MESH% %UPSTREAM_HOST%"}}
---
type: MeshAccessLog
name: default-logging-backend
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        backends:
          - type: File
            file:
              path: /dev/stdout
              format:
                type: Plain
                plain: '{"start_time": "%START_TIME%"}'
                omitEmptyValues: true
---
type: MeshAccessLog
name: otel
mesh: default
spec:
  targetRef:
    kind: Mesh
  rules:
    - default:
        backends:
          - type: OpenTelemetry
            openTelemetry:
              endpoint: otel-collector:4317
              attributes:
                - key: mesh
                  value: "%KUMA_MESH%"
              body:
                kvlistValue:
                  values:
                    - key: mesh
                      value:
                        stringValue: "%KUMA_MESH%"
"""  # noqa: E501 - §15's YAML byte for byte


@pytest.mark.parametrize("doc", list(yaml.safe_load_all(KUMA_YAML)), ids=lambda d: d["name"])
def test_kuma_yaml_is_accepted(doc: dict[str, Any]) -> None:
    assert PLUGIN.validate(doc) == []
    PLUGIN.parse(doc)


def _doc(backends: Any, section: str = "to") -> dict[str, Any]:
    entry: dict[str, Any] = {"default": {"backends": backends}}
    if section != "rules":
        entry["targetRef"] = {"kind": "Mesh"}
    return {"type": "MeshAccessLog", "mesh": "default", "name": "x", "spec": {section: [entry]}}


B = "spec.to[0].default.backends"


@pytest.mark.parametrize(("backends", "paths"), [
    ([{"file": {"path": "/tmp/a"}}], {f"{B}[0].type"}),
    ([{"type": "Syslog"}], {f"{B}[0].type"}),
    ([{"type": "File", "file": {}}], {f"{B}[0].file.path"}),
    ([{"type": "File", "file": {"path": "relative.log"}}], {f"{B}[0].file.path"}),
    ([{"type": "File"}], {f"{B}[0].file"}),
    ([{"type": "File", "file": {"path": "/a"}, "tcp": {"address": "a:1"}}], {f"{B}[0].tcp"}),
    ([{"type": "Tcp", "tcp": {"address": "10.0.0.5"}}], {f"{B}[0].tcp.address"}),
    ([{"type": "Tcp", "tcp": {"address": "host:99999"}}], {f"{B}[0].tcp.address"}),
    ([{"type": "Tcp", "tcp": {"address": "bad host:80"}}], {f"{B}[0].tcp.address"}),
    ([{"type": "File", "file": {"path": "/a", "format": {"plain": "x"}}}], {f"{B}[0].file.format.type"}),
    ([{"type": "File", "file": {"path": "/a", "format": {"type": "Plain"}}}], {f"{B}[0].file.format.plain"}),
    ([{"type": "File", "file": {"path": "/a", "format": {"type": "Plain", "plain": "x", "json": []}}}],
     {f"{B}[0].file.format.json"}),
    ([{"type": "File", "file": {"path": "/a", "format": {"type": "Json", "json": []}}}], {f"{B}[0].file.format.json"}),
    ([{"type": "File", "file": {"path": "/a", "format": {"type": "Json", "json": [{"key": "a", "value": 'x"y'},
                                                                                   {"key": "", "value": "v"}]}}}],
     {f"{B}[0].file.format.json[0]", f"{B}[0].file.format.json[1].key"}),
    ([{"type": "OpenTelemetry", "openTelemetry": {}}], {f"{B}[0].openTelemetry"}),
    ([{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "c:4317", "backendRef": {
        "kind": "MeshOpenTelemetryBackend", "name": "otel"}}}], {f"{B}[0].openTelemetry"}),
    ([{"type": "OpenTelemetry", "openTelemetry": {"backendRef": {"kind": "Other"}}}],
     {f"{B}[0].openTelemetry.backendRef.kind", f"{B}[0].openTelemetry.backendRef"}),
    ([{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "c:4317", "attributes": [
        {"key": "Bad-Key", "value": "v"}, {"key": "ok.key_2", "value": "v"}, {"key": "a..b", "value": "v"}]}}],
     {f"{B}[0].openTelemetry.attributes[0].key", f"{B}[0].openTelemetry.attributes[2].key"}),
    ([{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "c:4317", "body": {"nope": 1}}}],
     {f"{B}[0].openTelemetry.body"}),
    # every violation of one document at once
    ([{"type": "File", "file": {}}, {"type": "Tcp", "tcp": {"address": "x"}}, {}],
     {f"{B}[0].file.path", f"{B}[1].tcp.address", f"{B}[2].type"}),
])
def test_bad_backends_are_refused_with_every_path(backends: Any, paths: set[str]) -> None:
    got = {p for p, _ in PLUGIN.validate(_doc(backends))}
    assert got == paths


def test_missing_backends_and_rules_with_to_are_refused() -> None:
    doc = _doc([])
    del doc["spec"]["to"][0]["default"]["backends"]
    doc["spec"]["rules"] = [{"default": {"backends": []}}]
    got = {p for p, _ in PLUGIN.validate(doc)}
    assert got == {"spec.to[0].default.backends", "spec.rules"}


def test_host_port() -> None:
    assert split_host_port("collector.obs:5000") == ("collector.obs", 5000)
    assert split_host_port("[::1]:4317") == ("::1", 4317)
    assert split_host_port("::1:4317") is None
    assert split_host_port("a:0") is None


DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
    "address": "10.0.0.1", "inbound": [{"port": 8080, "servicePort": 8081,
                                        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}]}})


def _policy(name: str, spec: dict[str, Any]) -> Any:
    return PLUGIN.parse({"type": "MeshAccessLog", "mesh": "default", "name": name, "spec": spec})


def _file(path: str) -> dict[str, Any]:
    return {"type": "File", "file": {"path": path}}


def test_more_specific_to_replaces_backends_and_inbound_entries_add_up() -> None:
    mesh_wide = _policy("all", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [_file("/a")]}}],
                                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [_file("/in-a")]}}]})
    specific = _policy("to-backend", {"to": [
        {"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"backends": [_file("/b")]}},
        {"targetRef": {"kind": "MeshService", "name": "db"}, "default": {"backends": []}}]})
    web = _policy("web-in", {"targetRef": {"kind": "MeshService", "name": "web"},
                             "rules": [{"default": {"backends": [_file("/in-b")]}}]})
    rules = PLUGIN.rules(None, DP, match("MeshAccessLog", [mesh_wide, specific, web], DP))  # type: ignore[arg-type]
    assert isinstance(rules, AccessLogRules)
    paths = lambda bs: [b.file.path for b in bs]  # noqa: E731
    assert paths(rules.outbound("backend")) == ["/b"]
    assert paths(rules.outbound("other")) == ["/a"]
    assert rules.outbound("db") == ()  # an empty list switches logging off
    assert paths(rules.outbound(None)) == ["/a"]  # passthrough: Mesh entries only
    assert paths(rules.inbounds["10.0.0.1:8080"]) == ["/in-a", "/in-b"]
    assert rules.outbound_conf("backend") == {"backends": [{"type": "File", "file": {"path": "/b"}}]}


def test_unresolvable_otel_backend_ref_is_a_warning_and_dropped() -> None:
    p = _policy("otel-ref", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
        {"type": "OpenTelemetry", "openTelemetry": {"backendRef": {"kind": "MeshOpenTelemetryBackend",
                                                                   "name": "main"}}}, _file("/a")]}}]})
    rules = PLUGIN.rules(None, DP, match("MeshAccessLog", [p], DP))  # type: ignore[arg-type]
    assert [b.type for b in rules.outbound("x")] == ["File"]  # type: ignore[attr-defined, union-attr]
    assert len(rules.warnings) == 1 and "MeshAccessLog otel-ref: backends[0]" in rules.warnings[0]
