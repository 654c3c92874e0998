"""MeshTLS: Kuma docs' YAML accepted unchanged, bad specs refused at exact paths (versions and ciphers only under a
Mesh-wide policy), and what it does to a proxy: Permissive/Strict per inbound over the Mesh's own mode, TLS
parameters on the inbound and the in-mesh outbound TLS contexts, each config loaded by the real Envoy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from policylib import BACKEND_DP, BACKEND_HTTP, BACKEND_TCP, MTLS_MESH, assert_refused_at, policy_doc
from unit.controlplane.xds._xds_testlib import envoy_accepts

from dpagent.controlplane.policies.meshtls import MeshTLSPlugin
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from dpagent.errors import ValidationError
from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

PLUGIN = MeshTLSPlugin()
TLS13 = common_pb2.TlsParameters.TLSv1_3

DOCS = ["""
type: MeshTLS
name: set-version-and-ciphers
mesh: default
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        tlsVersion:
          min: TLS13
          max: TLS13
        tlsCiphers:
          - ECDHE-ECDSA-AES256-GCM-SHA384
""", """
type: MeshTLS
name: permissive-backend
mesh: default
spec:
  targetRef:
    kind: MeshSubset
    tags:
      kuma.io/service: backend
  rules:
    - default:
        mode: Permissive
""", """
type: MeshTLS
name: strict-dp
mesh: default
spec:
  targetRef:
    kind: Dataplane
    name: backend-1
  from:
    - targetRef:
        kind: Mesh
      default:
        mode: Strict
"""]


@pytest.mark.parametrize("doc", DOCS)
def test_kuma_docs_accepted(doc: str) -> None:
    parsed = yaml.safe_load(doc)
    assert PLUGIN.validate(parsed) == []
    PLUGIN.parse(parsed)


def mtls_doc(conf: Any, section: str = "from", top: Any = None, name: str = "p") -> dict[str, Any]:
    return policy_doc("MeshTLS", conf, section, top=top or {"kind": "Mesh"}, name=name)


SUBSET = {"kind": "MeshSubset", "tags": {"kuma.io/service": "backend"}}
P = "spec.from[0].default"


@pytest.mark.parametrize(("doc", "paths"), [
    (mtls_doc({"mode": "Lenient"}), [f"{P}.mode"]),
    (mtls_doc({"tlsVersion": {"min": "TLS14", "max": "SSL3", "x": 1}}),
     [f"{P}.tlsVersion.min", f"{P}.tlsVersion.max", f"{P}.tlsVersion.x"]),
    (mtls_doc({"tlsVersion": {"min": "TLS13", "max": "TLS12"}}), [f"{P}.tlsVersion"]),
    (mtls_doc({"tlsCiphers": ["RC4", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]}),
     [f"{P}.tlsCiphers[0]", f"{P}.tlsCiphers"]),
    (mtls_doc({"tlsVersion": {"min": "TLS13"}, "tlsCiphers": ["ECDHE-RSA-AES128-GCM-SHA256"], "mode": "Strict"},
              top=SUBSET), [f"{P}.tlsVersion", f"{P}.tlsCiphers"]),
    (mtls_doc({"tlsVersion": {"min": "TLS13"}}, "rules", top={"kind": "Dataplane", "name": "backend-1"}),
     ["spec.rules[0].default.tlsVersion"]),
    (mtls_doc({"mode": "Strict"}, top={"kind": "MeshService", "name": "backend"}), ["spec.targetRef.kind"]),
])
def test_bad_specs_every_violation_with_path(doc: dict[str, Any], paths: list[str]) -> None:
    assert_refused_at(PLUGIN.validate(doc), paths)
    with pytest.raises(ValidationError):
        PLUGIN.parse(doc)


WEB_DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
    "address": "10.0.0.1", "inbound": [
        {"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
    "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}})
PERMISSIVE_MESH = parse_mesh({"type": "Mesh", "name": "default", "mtls": {
    "enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin", "mode": "PERMISSIVE"}]}})


def resources(policies: list[dict[str, Any]], mesh: Any = MTLS_MESH, dp: Any = BACKEND_DP) -> dict[str, Any]:
    ctx = MeshContext(mesh, [BACKEND_DP, WEB_DP], {"MeshTLS": policies})
    return generate(ctx, dp, build_proxy(ctx, dp)).messages()


def chain_names(res: dict[str, Any], key: str) -> list[str]:
    return [c.name for c in res[LISTENER][f"inbound:{key}"].filter_chains]


def test_permissive_policy_on_a_strict_mesh_splits_only_the_selected_proxy() -> None:
    policy = mtls_doc({"mode": "Permissive"}, "rules", top={"kind": "Dataplane", "name": "backend-1"})
    res = resources([policy])
    for key in (BACKEND_HTTP, BACKEND_TCP):
        assert chain_names(res, key) == [f"inbound:{key}", f"inbound:{key}:plaintext"]
    web = resources([policy], dp=WEB_DP)
    assert chain_names(web, "10.0.0.1:8080") == ["inbound:10.0.0.1:8080"]


def test_strict_policy_on_a_permissive_mesh_removes_the_plaintext_chain() -> None:
    assert chain_names(resources([], PERMISSIVE_MESH), BACKEND_HTTP) == [f"inbound:{BACKEND_HTTP}",
                                                                        f"inbound:{BACKEND_HTTP}:plaintext"]
    res = resources([mtls_doc({"mode": "Strict"}, top=SUBSET)], PERMISSIVE_MESH)  # the backend inbound only
    listener = res[LISTENER][f"inbound:{BACKEND_HTTP}"]
    assert [c.name for c in listener.filter_chains] == [f"inbound:{BACKEND_HTTP}"]
    assert not listener.listener_filters and not listener.filter_chains[0].filter_chain_match.transport_protocol
    assert chain_names(res, BACKEND_TCP) == [f"inbound:{BACKEND_TCP}", f"inbound:{BACKEND_TCP}:plaintext"]


def _params(socket: Any, kind: type) -> Any:
    ctx = kind()
    socket.typed_config.Unpack(ctx)
    return ctx.common_tls_context.tls_params


def test_versions_and_ciphers_on_inbound_and_in_mesh_outbound_tls() -> None:
    policy = mtls_doc({"tlsVersion": {"min": "TLS13", "max": "TLS13"},
                       "tlsCiphers": ["ECDHE-ECDSA-AES256-GCM-SHA384"]})
    res = resources([policy], dp=WEB_DP)
    inbound = _params(res[LISTENER]["inbound:10.0.0.1:8080"].filter_chains[0].transport_socket,
                      tls_pb2.DownstreamTlsContext)
    outbound = _params(res[CLUSTER]["backend"].transport_socket, tls_pb2.UpstreamTlsContext)
    for params in (inbound, outbound):
        assert (params.tls_minimum_protocol_version, params.tls_maximum_protocol_version,
                list(params.cipher_suites)) == (TLS13, TLS13, ["ECDHE-ECDSA-AES256-GCM-SHA384"])
    # a proxy the policy does not reach keeps the shared cluster untouched
    plain = resources([], dp=WEB_DP)
    assert _params(plain[CLUSTER]["backend"].transport_socket,
                   tls_pb2.UpstreamTlsContext).tls_minimum_protocol_version != TLS13


@pytest.mark.envoy
def test_envoy_accepts(tmp_path: Any) -> None:
    policies = [mtls_doc({"tlsVersion": {"min": "TLS12", "max": "TLS13"},
                          "tlsCiphers": ["ECDHE-RSA-AES128-GCM-SHA256"]}, name="mesh"),
                mtls_doc({"mode": "Permissive"}, top={"kind": "Dataplane", "name": "backend-1"}, name="dp")]
    envoy_accepts(resources(policies), tmp_path, "spiffe://default/backend")
