"""From policy documents to what `inspect --type policies` shows and what the proxy gets: matching, the merge of
a mesh-wide and a per-service `to[]` item (field by field, the more specific wins), and the warnings for the
locality fields this CP does not apply."""

from __future__ import annotations

from unit.controlplane.policies.route_plugin_testlib import CLIENT, CONTEXT, MESH

from dpagent.controlplane.inspect import kind_policies
from dpagent.controlplane.policies.meshloadbalancingstrategy.api import KIND
from dpagent.controlplane.xds.context import MeshContext, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.snapshot import CLUSTER

DOCS = [
    {"type": KIND, "mesh": "default", "name": "mesh-wide", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {
        "loadBalancer": {"type": "Random"}, "localityAwareness": {"disabled": True}}}]}},
    {"type": KIND, "mesh": "default", "name": "backend-ring", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {
            "loadBalancer": {"type": "RingHash"}, "hashPolicies": [{"type": "Header", "header": {"name": "x-u"}}],
            "localityAwareness": {"localZone": {"affinityTags": [{"key": "k8s.io/node"}]}}}}]}},
]


def test_inspect_shows_the_merged_conf_per_outbound_and_the_proxy_gets_it() -> None:
    ctx = MeshContext(MESH, CONTEXT.dataplanes, policies={KIND: DOCS}, vips=CONTEXT.vips)
    proxy = build_proxy(ctx, CLIENT)
    mine = next(k for k in kind_policies(proxy) if k.kind == KIND)
    by_service = {o.service: o for o in mine.outbounds}
    assert by_service["backend"].policies == ["backend-ring", "mesh-wide"]
    assert by_service["backend"].conf == {
        "loadBalancer": {"type": "RingHash"}, "hashPolicies": [{"type": "Header", "header": {"name": "x-u"}}],
        "localityAwareness": {"disabled": True, "localZone": {"affinityTags": [{"key": "k8s.io/node"}]}}}
    assert by_service["db"].conf == {"loadBalancer": {"type": "Random"}, "localityAwareness": {"disabled": True}}
    assert any("affinityTags is not applied" in w for w in mine.warnings)
    clusters = generate(ctx, CLIENT, proxy).messages()[CLUSTER]
    assert clusters["backend"].lb_policy == clusters["backend"].RING_HASH
    assert clusters["db"].lb_policy == clusters["db"].RANDOM
