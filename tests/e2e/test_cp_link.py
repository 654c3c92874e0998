"""The proxy's link to the CP with real Envoys: overlapping streams after a blip, refusal, reconnect speed.

A network blip or NAT timeout lets Envoy open its new ADS stream before the CP has seen the old connection die.
Here a second gRPC client with the same node id and token plays that older, half-dead stream, and the real
Envoy holds the live one.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from testlib import free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def dataplane(name: str, service: str, port: int, service_port: int, outbound: str = "") -> str:
    return (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
            f"  - port: {port}\n    servicePort: {service_port}\n    tags:\n      kuma.io/service: {service}\n"
            f"      kuma.io/protocol: http\n{outbound}")


def outbound(port: int, service: str) -> str:
    return f"  outbound:\n  - port: {port}\n    tags:\n      kuma.io/service: {service}\n"


def deny(service: str) -> str:
    return (f"type: MeshTrafficPermission\nmesh: default\nname: deny-{service}\nspec:\n"
            f"  targetRef: {{kind: MeshService, name: {service}}}\n  from:\n"
            f"  - targetRef: {{kind: MeshService, name: client-{service}}}\n    default: {{action: Deny}}\n")


def status(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def readiness(agent) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{agent.readiness_port}/ready", timeout=2).text.strip()
    except httpx.HTTPError as e:
        return repr(e)


class OlderStream:
    """An ADS stream of the same node opened before Envoy's: what the CP still holds from before a blip."""

    def __init__(self, cp, name: str, token: str, *, direct: bool) -> None:
        node = base_pb2.Node(id=f"default.{name}", cluster=name)
        if direct:
            node.metadata.update({"dataplane.resource": "{}"})
        self.requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self.requests.put(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        self.channel = grpc.secure_channel(f"127.0.0.1:{cp.xds_port}",
                                           grpc.ssl_channel_credentials(cp.ca_file.read_bytes()),
                                           options=[("grpc.use_local_subchannel_pool", 1)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(iter(self.requests.get, None), metadata=(("authorization", token),))
        self.thread = threading.Thread(target=self._ack_all, daemon=True)
        self.thread.start()

    def _ack_all(self) -> None:
        try:
            for resp in self.call:
                self.requests.put(discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url, version_info=resp.version_info, response_nonce=resp.nonce))
        except grpc.RpcError:
            pass

    def goodbye(self) -> None:
        self.requests.put(None)  # half-close: an orderly end of the stream
        self.thread.join(10)

    def vanish(self) -> None:
        self.call.cancel()
        self.channel.close()
        self.thread.join(10)


def streams(cp, name: str) -> int:
    return cp.inspect(name)["xds"].get("streams", 0)


def test_pushes_still_reach_envoy_after_its_older_stream_dies(cp, agents, apps):
    port, out = free_port(), free_port()
    doc = dataplane("blip-1", "blip", port, apps["backend"].port)
    cp.cli("apply", "-f", "-", input=doc)
    token = cp.token("blip-1")
    older = OlderStream(cp, "blip-1", token, direct=True)
    wait_for(lambda: streams(cp, "blip-1") == 1, 10, what="the older stream connected")
    agents("blip-1", doc, token)
    agents("client-blip-1", dataplane("client-blip-1", "client-blip", free_port(), 1, outbound(out, "blip")))
    wait_for(lambda: streams(cp, "blip-1") == 2, 10, what="Envoy's stream beside the older one")
    wait_for(lambda: status(out) == 200, 20, what="client -> blip through the mesh")
    older.vanish()
    wait_for(lambda: streams(cp, "blip-1") == 1, 10, what="the CP saw the older stream die")
    cp.cli("apply", "-f", "-", input=deny("blip"))
    t0 = time.monotonic()
    wait_for(lambda: status(out) == 403, 10, interval=0.05, what="the Deny in force on blip-1's Envoy")
    assert time.monotonic() - t0 < 3
    cp.cli("delete", "mtp", "deny-blip")


def test_older_streams_goodbye_does_not_deregister_the_live_proxy(cp, agents, apps):
    doc = dataplane("blip-2", "blip2", free_port(), apps["backend"].port)
    cp.cli("apply", "-f", "-", input=doc)
    token = cp.token("blip-2")
    older = OlderStream(cp, "blip-2", token, direct=True)
    wait_for(lambda: streams(cp, "blip-2") == 1, 10, what="the older stream connected")
    agent = agents("blip-2", doc, token)
    wait_for(lambda: streams(cp, "blip-2") == 2, 10, what="Envoy's stream beside the older one")
    older.goodbye()
    wait_for(lambda: streams(cp, "blip-2") == 1, 10, what="the older stream closed")
    time.sleep(3.5)  # the CP's deregistration delay (1 s) and token re-check interval (1 s), several times over
    assert "blip-2" in cp.cli("get", "dataplanes").stdout, "the live proxy's Dataplane was deleted"
    assert streams(cp, "blip-2") == 1 and readiness(agent) == "READY"


def test_refused_proxy_stops_reporting_ready_and_recovers_with_a_new_token(cp, agents, apps, tmp_path):
    token = cp.token("refused-1")
    agent = agents("refused-1", dataplane("refused-1", "refused", free_port(), apps["backend"].port), token)
    revoked = tmp_path / "revoked.token"
    revoked.write_text(token)
    cp.cli("token", "revoke", "--token-file", str(revoked))
    wait_for(lambda: readiness(agent).startswith("NOT_READY"), 15, interval=0.2, what="NOT_READY after revocation")
    text = readiness(agent)
    assert "refuses this proxy" in text and "revoked" in text, text
    assert agent.proc.poll() is None and agent.envoy_pids(), "the agent and its Envoy keep running"
    next(agent.log.parent.glob("refused-1.token")).write_text(cp.token("refused-1"))
    wait_for(lambda: readiness(agent) == "READY", 40, interval=0.5, what="READY again with a fresh token")


def test_token_of_a_just_rotated_signing_key_is_accepted_at_once(cp, apps):
    """The CP caches signing keys for a second; a token of a key made within that second used to get 401."""
    from dpagent.agent import bootstrap as bs

    doc = dataplane("fresh-key-1", "fresh", free_port(), apps["backend"].port)
    cp.cli("apply", "-f", "-", input=doc)
    api = httpx.Client(base_url=cp.api, timeout=10)

    def bootstrap(token: str) -> httpx.Response:
        body = bs.build_request(bs.BootstrapRequestParams(
            mesh="default", name="fresh-key-1", token=token, token_path="", resource_json="",
            envoy=bs.EnvoyVersion("1.40.0", "x/1.40.0/Clean/RELEASE/BoringSSL"), ca_cert="", dns_port=0,
            readiness_port=0, workdir=""))
        return httpx.post(f"{cp.url}/bootstrap", json=body, verify=str(cp.ca_file), timeout=10)

    def token() -> str:
        r = api.post("/tokens/dataplane", json={"name": "fresh-key-1", "mesh": "default", "validFor": "1h"})
        r.raise_for_status()
        return r.text.strip()

    assert bootstrap(token()).status_code == 200  # the CP has just read (and cached) the mesh's keys
    api.post("/meshes/default/signing-keys").raise_for_status()
    r = bootstrap(token())
    assert r.status_code == 200, r.text


def test_policy_reaches_proxies_within_5s_of_the_cp_answering_after_an_outage(cp, agents, apps):
    """Envoy's default ADS back-off grows to 30 s; after a 10 s outage proxies took 3-15 s to come back."""
    out = free_port()
    agents("after-1", dataplane("after-1", "after", free_port(), apps["backend"].port))
    agents("client-after-1", dataplane("client-after-1", "client-after", free_port(), 1, outbound(out, "after")))
    wait_for(lambda: status(out) == 200, 20, what="client -> after through the mesh")
    cp.stop()
    time.sleep(10)
    cp.start()  # returns once the API answers
    t0 = time.monotonic()
    cp.cli("apply", "-f", "-", input=deny("after"))
    wait_for(lambda: status(out) == 403, 30, interval=0.05, what="the Deny in force after the outage")
    took = time.monotonic() - t0
    assert took <= 5.0, f"the Deny took {took:.2f}s after the CP answered again"
