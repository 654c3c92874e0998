"""MeshHTTPRoute validation: the reference's examples pass; each refused document reports every violation at its
exact path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from policylib import assert_refused_at

from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.meshhttproute.api import (
    parse_meshhttproute,
    to_rules,
    validate_meshhttproute,
)
from dpagent.errors import ValidationError

EXAMPLES_TEXT = """
type: MeshHTTPRoute
name: web-to-backend
mesh: default
spec:
  targetRef: {kind: Dataplane, labels: {app: web}}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          default:
            backendRefs:
              - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}
              - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 10}
        - matches: [{method: GET, headers: [{type: Exact, name: x-beta, value: "1"}]}]
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: x-routed, value: beta}], remove: [x-debug]}
            backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
---
type: MeshHTTPRoute
name: rewrite-and-mirror
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend, sectionName: http}
      rules:
        - matches: [{path: {type: PathPrefix, value: /v1}}]
          default:
            filters:
              - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
              - {type: RequestMirror, requestMirror: {percentage: "10", backendRef: {kind: MeshService, name: shadow}}}
---
type: MeshHTTPRoute
name: everything-else
mesh: default
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches:
            - path: {type: Exact, value: /login}
              method: POST
              queryParams: [{type: Exact, name: a, value: "1"}, {type: RegularExpression, name: b, value: "^x+$"}]
              headers: [{type: Present, name: x-a}, {type: Absent, name: x-b}, {type: Prefix, name: x-c, value: p},
                        {type: RegularExpression, name: x-d, value: "v[0-9]"}, {name: x-e, value: e}]
            - path: {type: RegularExpression, value: "^/items/[0-9]+$"}
            - path: {type: PathPrefix, value: /}
          default:
            filters:
              - type: ResponseHeaderModifier
                responseHeaderModifier: {add: [{name: x-via, value: mesh}], set: [{name: x-b, value: "2"}]}
              - type: RequestRedirect
                requestRedirect: {scheme: https, hostname: example.com, port: 8443, statusCode: 301,
                                  path: {type: ReplaceFullPath, replaceFullPath: /new}}
              - {type: URLRewrite, urlRewrite: {hostname: backend.internal}}
              - {type: RequestMirror, requestMirror: {backendRef: {kind: MeshServiceSubset, name: shadow,
                                                                    tags: {version: v9}}, percentage: 5}}
            backendRefs:
              - {kind: MeshService, name: backend, weight: 0}
              - {kind: MeshMultiZoneService, name: backend-mz, port: 8080}
              - {kind: MeshExternalService, name: httpbin}
              - {kind: MeshService, name: backend, port: 80, weight: 3}
"""
EXAMPLES = [d for d in yaml.safe_load_all(EXAMPLES_TEXT) if d]


@pytest.mark.parametrize("doc", EXAMPLES, ids=lambda d: d["name"])
def test_examples_are_valid(doc: dict[str, Any]) -> None:
    assert validate_meshhttproute(doc) == []
    parsed = parse_meshhttproute(doc)
    assert isinstance(parsed, Policy)


def test_parse_typed_and_defaults() -> None:
    doc = copy.deepcopy(EXAMPLES[0])
    route = parse_meshhttproute(doc)
    assert route.target_ref.kind == "Dataplane" and route.target_ref.labels == {"app": "web"}
    rules = to_rules(route.to[0].conf)
    rule = rules[0]
    assert rule.matches[0].path is not None and rule.matches[0].path.value == "/api"
    refs = rule.default.backend_refs or ()
    assert [(r.tags["version"], r.weight) for r in refs] == [("v1", 90), ("v2", 10)]
    second = rules[1].default
    assert (second.backend_refs or ())[0].weight == 1  # Kuma's default weight
    assert second.filters is not None and second.filters[0].request_header_modifier is not None
    assert second.filters[0].request_header_modifier.remove == ("x-debug",)
    # a missing top-level targetRef means the whole mesh
    assert parse_meshhttproute(_doc({"to": []})).target_ref.kind == "Mesh"


def _doc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshHTTPRoute", "name": "r", "mesh": "default", "spec": spec}


def _rule(**default: Any) -> dict[str, Any]:
    return {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "default": default}


def _to(*rules: dict[str, Any], **ref: Any) -> dict[str, Any]:
    return {"targetRef": ref or {"kind": "MeshService", "name": "backend"}, "rules": list(rules)}


def _filters(*filters: dict[str, Any], matches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule = _rule(filters=list(filters))
    if matches is not None:
        rule["matches"] = matches
    return _doc({"to": [_to(rule)]})


R0 = "spec.to[0].rules[0]"
F0 = f"{R0}.default.filters[0]"

# case → (document, the exact set of violation paths)
REFUSED: dict[str, tuple[dict[str, Any], set[str]]] = {
    "envelope": ({"type": "MeshTCPRoute", "name": "Bad_Name", "spec": {"x": 1}, "extra": 1},
                 {"type", "name", "mesh", "spec.x", "extra"}),
    "no spec": ({"type": "MeshHTTPRoute", "name": "r", "mesh": "default"}, {"spec"}),
    "top kind": (_doc({"targetRef": {"kind": "MeshExternalService", "name": "x"}}), {"spec.targetRef.kind"}),
    "top Mesh with name": (_doc({"targetRef": {"kind": "Mesh", "name": "x", "mesh": "m"}}),
                           {"spec.targetRef.name", "spec.targetRef.mesh"}),
    "top Dataplane": (_doc({"targetRef": {"kind": "Dataplane", "name": "dp-1", "labels": {"a": "b"},
                                          "sectionName": "main", "tags": {"a": "b"}, "proxyTypes": ["Sidecar"]}}),
                      {"spec.targetRef.labels", "spec.targetRef.sectionName", "spec.targetRef.tags",
                       "spec.targetRef.proxyTypes"}),
    "top proxyTypes": (_doc({"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}, "proxyTypes": []}}),
                       {"spec.targetRef.proxyTypes"}),
    "top proxyTypes value": (_doc({"targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar", "Ingress"]}}),
                             {"spec.targetRef.proxyTypes[1]"}),
    "top MeshServiceSubset without name": (_doc({"targetRef": {"kind": "MeshServiceSubset", "tags": {"a": "b"}}}),
                                           {"spec.targetRef.name"}),
    "to targetRef missing": (_doc({"to": [{"rules": []}]}), {"spec.to[0].targetRef"}),
    "to kind": (_doc({"to": [_to(kind="Mesh")]}), {"spec.to[0].targetRef.kind"}),
    "to MeshService needs name or labels": (_doc({"to": [_to(kind="MeshService")]}), {"spec.to[0].targetRef"}),
    "to name charset": (_doc({"to": [_to(kind="MeshService", name="Back end")]}), {"spec.to[0].targetRef.name"}),
    "to labels and name": (_doc({"to": [_to(kind="MeshService", name="b", labels={"a": "b"})]}),
                           {"spec.to[0].targetRef.labels"}),
    "to rules missing, hostnames": (_doc({"to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                                                  "hostnames": ["a.com"]}]}),
                                    {"spec.to[0].rules", "spec.to[0].hostnames"}),
    "matches missing / empty": (_doc({"to": [_to({"default": {}}, {"matches": []})]}),
                                {f"{R0}.matches", "spec.to[0].rules[1].matches"}),
    "path rules": (_doc({"to": [_to({"matches": [
        {"path": {"type": "Exact", "value": "a"}},
        {"path": {"type": "PathPrefix", "value": "/a/"}},
        {"path": {"type": "PathPrefix", "value": ""}},
        {"path": {"type": "Glob", "value": "/a"}},
        {"path": {"type": "RegularExpression", "value": "("}},
        {"path": {"type": "PathPrefix", "value": "/"}, "method": "FETCH", "port": 1}]})]}),
                   {f"{R0}.matches[0].path.value", f"{R0}.matches[1].path.value", f"{R0}.matches[2].path.value",
                    f"{R0}.matches[3].path.type", f"{R0}.matches[4].path.value", f"{R0}.matches[5].method",
                    f"{R0}.matches[5].port"}),
    "headers": (_doc({"to": [_to({"matches": [{"headers": [
        {"type": "Present", "name": "x-a", "value": "1"},
        {"type": "Absent", "name": "x-b", "value": ""},
        {"name": "X-Upper", "value": "1"},
        {"type": "Suffix", "name": "x-c"},
        {"value": "1"}]}]})]}),
                {f"{R0}.matches[0].headers[0].value", f"{R0}.matches[0].headers[1].value",
                 f"{R0}.matches[0].headers[2].name", f"{R0}.matches[0].headers[3].type",
                 f"{R0}.matches[0].headers[4].name"}),
    "query params": (_doc({"to": [_to({"matches": [{"queryParams": [
        {"type": "Exact", "name": "a", "value": "1"},
        {"type": "Exact", "name": "a", "value": "2"},
        {"type": "Prefix", "name": "b", "value": "1"},
        {"type": "Exact", "name": "c"}]}]})]}),
                     {f"{R0}.matches[0].queryParams[1].name", f"{R0}.matches[0].queryParams[2].type",
                      f"{R0}.matches[0].queryParams[3].value"}),
    "regex Envoy cannot run": (_doc({"to": [_to({"matches": [
        {"path": {"type": "RegularExpression", "value": "^/(?=a)"},
         "headers": [{"type": "RegularExpression", "name": "x", "value": "(a)\\1"}],
         "queryParams": [{"type": "RegularExpression", "name": "q", "value": "(?<!x)y"}]}]})]}),
                               {f"{R0}.matches[0].path.value", f"{R0}.matches[0].headers[0].value",
                                f"{R0}.matches[0].queryParams[0].value"}),
    "filter type": (_filters({"type": "Fault"}, {"type": "URLRewrite"}),
                    {f"{F0}.type", f"{R0}.default.filters[1].urlRewrite"}),
    "filter wrong sub-object": (_filters({"type": "URLRewrite", "urlRewrite": {"hostname": "a.b"},
                                          "requestRedirect": {"port": 1}}), {f"{F0}.requestRedirect"}),
    "header modifier empty": (_filters({"type": "RequestHeaderModifier", "requestHeaderModifier": {}}),
                              {f"{F0}.requestHeaderModifier"}),
    "header modifier repeats": (_filters({"type": "ResponseHeaderModifier", "responseHeaderModifier": {
        "set": [{"name": "x-a", "value": "1"}], "add": [{"name": "x-a", "value": "2"}, {"name": "x-b"}],
        "remove": ["x-b", "Bad Name"]}}),
                                {f"{F0}.responseHeaderModifier.add[0]", f"{F0}.responseHeaderModifier.add[1].value",
                                 f"{F0}.responseHeaderModifier.remove[0]", f"{F0}.responseHeaderModifier.remove[1]"}),
    "header modifier too many": (_filters({"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "remove": [f"x-{i}" for i in range(17)]}}), {f"{F0}.requestHeaderModifier.remove"}),
    "redirect": (_filters({"type": "RequestRedirect", "requestRedirect": {
        "scheme": "ftp", "hostname": "10.0.0.1", "port": 0, "statusCode": 304,
        "path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/x"}}}),
                 {f"{F0}.requestRedirect.scheme", f"{F0}.requestRedirect.hostname", f"{F0}.requestRedirect.port",
                  f"{F0}.requestRedirect.statusCode", f"{F0}.requestRedirect.path.replacePrefixMatch",
                  f"{F0}.requestRedirect.path.replaceFullPath"}),
    "prefix rewrite needs PathPrefix matches": (
        _filters({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                                 "replacePrefixMatch": "/v2"}}},
                 matches=[{"path": {"type": "PathPrefix", "value": "/a"}}, {"path": {"type": "Exact", "value": "/b"}}]),
        {f"{F0}.urlRewrite.path.replacePrefixMatch"}),
    "url rewrite": (_filters({"type": "URLRewrite", "urlRewrite": {"hostname": "Not_A_Host",
                                                                    "hostToBackendHostname": True}}),
                    {f"{F0}.urlRewrite.hostname", f"{F0}.urlRewrite.hostToBackendHostname"}),
    "mirror": (_filters({"type": "RequestMirror", "requestMirror": {"percentage": "12.x"}},
                        {"type": "RequestMirror", "requestMirror": {
                            "backendRef": {"kind": "MeshExternalService", "name": "x"}, "percentage": 101}}),
               {f"{F0}.requestMirror.backendRef", f"{F0}.requestMirror.percentage",
                f"{R0}.default.filters[1].requestMirror.backendRef.kind",
                f"{R0}.default.filters[1].requestMirror.percentage"}),
    "backendRefs": (_doc({"to": [_to(_rule(backendRefs=[
        {"kind": "Mesh"},
        {"kind": "MeshMultiZoneService", "name": "mz"},
        {"kind": "MeshService", "name": "b", "weight": -1, "port": 70000},
        {"kind": "MeshServiceSubset", "tags": {"version": "v/2"}},
        {"kind": "MeshService", "name": "b", "weight": True}]))]}),
                    {f"{R0}.default.backendRefs[0].kind", f"{R0}.default.backendRefs[1].port",
                     f"{R0}.default.backendRefs[2].weight", f"{R0}.default.backendRefs[2].port",
                     f"{R0}.default.backendRefs[3].name", f'{R0}.default.backendRefs[3].tags["version"]',
                     f"{R0}.default.backendRefs[4].weight"}),
    "unknown fields in rule and conf": (_doc({"to": [_to({"matches": [{}], "default": {"timeout": "1s"},
                                                          "name": "x"})]}),
                                        {f"{R0}.default.timeout", f"{R0}.name"}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_exact_paths(case: str) -> None:
    doc, paths = REFUSED[case]
    assert_refused_at(validate_meshhttproute(copy.deepcopy(doc)), paths)
    with pytest.raises(ValidationError):
        parse_meshhttproute(doc)


GATEWAY = {"kind": "MeshGateway", "name": "edge", "tags": {"port": "http-80"}}


def test_gateway_rules() -> None:
    ok = _doc({"targetRef": GATEWAY, "to": [{"targetRef": {"kind": "Mesh"}, "hostnames": ["*.example.com"], "rules": [
        _rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]),
        _rule(filters=[{"type": "URLRewrite", "urlRewrite": {"hostToBackendHostname": True}}],
              backendRefs=[{"kind": "MeshService", "name": "b"}])]}]})
    assert validate_meshhttproute(ok) == []
    bad = _doc({"targetRef": GATEWAY, "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                                              "hostnames": ["bad host"], "rules": [_rule()]}]})
    assert {p for p, _ in validate_meshhttproute(bad)} == {
        "spec.to[0].targetRef.kind", "spec.to[0].hostnames[0]", f"{R0}.default.backendRefs"}
    # listener tags are a gateway thing: a MeshGateway ref elsewhere may not carry them
    assert validate_meshhttproute(_doc({"to": [_to(_rule(backendRefs=[
        {"kind": "MeshService", "name": "b", "tags": {"a": "b"}}]))]})) != []
