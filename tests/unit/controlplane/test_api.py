"""The REST API over real HTTP (aiohttp test server) with the in-memory store: every error path says what is wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dpagent.controlplane.api import Api, is_loopback
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore, StoreUnavailable

MESH = {"type": "Mesh", "name": "default"}
DP = {"type": "Dataplane", "mesh": "default", "name": "web-1",
      "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    store = await MemoryStore.open()
    api = Api(Resources(store), admin_token="s3cret")
    async with TestClient(TestServer(api.app())) as c:
        yield c
    await store.close()


async def put(c: TestClient[Any, Any], path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    r = await c.put(path, json=body, **kw)
    return r.status, await r.json()


async def test_crud_and_status_codes(client):
    assert (await put(client, "/meshes/default", MESH))[0] == 201
    assert (await put(client, "/meshes/default", MESH))[0] == 200
    assert (await put(client, "/meshes/default/dataplanes/web-1", DP))[0] == 201
    r = await client.get("/meshes/default/dataplanes/web-1")
    doc = await r.json()
    assert r.status == 200 and doc["networking"]["address"] == "10.0.0.1" and doc["creationTime"].endswith("Z")
    r = await client.put("/meshes/default/dataplanes/web-2", data=(
        "type: Dataplane\nmesh: default\nname: web-2\nnetworking:\n  address: 10.0.0.2\n  inbound:\n"
        "  - port: 1\n    tags: {kuma.io/service: web}\n"), headers={"content-type": "application/yaml"})
    assert r.status == 201, await r.text()
    assert (await client.delete("/meshes/default/dataplanes/web-2")).status == 200
    r = await client.get("/meshes/default/dataplanes/web-2")
    assert r.status == 404 and (await r.json())["title"] == 'Dataplane "web-2" in mesh "default" not found'


async def test_validation_lists_every_violation_with_paths(client):
    await put(client, "/meshes/default", MESH)
    bad = {**DP, "networking": {"address": "not an ip", "inbound": [{"port": 0, "tags": {}}], "bogus": 1}}
    status, body = await put(client, "/meshes/default/dataplanes/web-1", bad)
    assert status == 400
    fields = [c["field"] for c in body["causes"]]
    assert fields == ["networking.bogus", "networking.address", "networking.inbound[0].port",
                      'networking.inbound[0].tags["kuma.io/service"]']
    status, body = await put(client, "/meshes/default", {"type": "Mesh", "name": "default",
                                                         "mtls": {"enabledBackend": "x", "backends": []}})
    assert status == 400 and body["causes"][0]["field"] == "mtls.enabledBackend"
    status, body = await put(client, "/meshes/default/meshtrafficpermissions/p", {
        "type": "MeshTrafficPermission", "mesh": "default", "name": "p",
        "spec": {"targetRef": {"kind": "MeshService"}, "from": [{"targetRef": {"kind": "Mesh"},
                                                                  "default": {"action": "Maybe"}}]}})
    assert status == 400
    assert {c["field"] for c in body["causes"]} == {"spec.targetRef.name", "spec.from[0].default.action"}


@pytest.mark.parametrize(("path", "body", "field", "fragment"), [
    ("/meshes/default/dataplanes/other", DP, "name", "does not match the name in the URL"),
    ("/meshes/prod/dataplanes/web-1", DP, "mesh", "does not match the mesh in the URL"),
    ("/meshes/default/dataplanes/web-1", {**DP, "type": "Mesh"}, "type", "must be Dataplane"),
    ("/meshes/default", {**MESH, "mesh": "x"}, "mesh", "not mesh-scoped"),
    ("/meshes/default/dataplanes/web-1", {**DP, "type": "Nope"}, "type", "unknown type"),
])
async def test_mismatches_name_the_field(client, path, body, field, fragment):
    await put(client, "/meshes/default", MESH)
    status, resp = await put(client, path, body)
    assert status == 400
    assert any(c["field"] == field and fragment in c["message"] for c in resp["causes"]), resp


async def test_missing_mesh_and_bad_bodies(client):
    status, body = await put(client, "/meshes/default/dataplanes/web-1", DP)
    assert status == 400 and 'mesh "default" does not exist' in body["causes"][0]["message"]
    r = await client.put("/meshes/default", data=b"{not json", headers={"content-type": "application/json"})
    assert r.status == 400 and "not valid JSON or YAML" in (await r.json())["causes"][0]["message"]
    r = await client.get("/meshes/nope/dataplanes")
    assert r.status == 404 and 'mesh "nope" not found' in (await r.json())["title"]
    r = await client.get("/meshes?size=0")
    assert r.status == 400
    r = await client.post("/meshes/default")
    assert r.status == 405


async def test_pagination(client):
    await put(client, "/meshes/default", MESH)
    for i in range(5):
        dp = {**DP, "name": f"dp-{i}"}
        await put(client, f"/meshes/default/dataplanes/dp-{i}", dp)
    page = await (await client.get("/meshes/default/dataplanes?size=2")).json()
    assert page["total"] == 5 and [d["name"] for d in page["items"]] == ["dp-0", "dp-1"]
    assert "offset=2" in page["next"]
    last = await (await client.get("/meshes/default/dataplanes?size=2&offset=4")).json()
    assert [d["name"] for d in last["items"]] == ["dp-4"] and last["next"] is None
    assert (await (await client.get("/dataplanes")).json())["total"] == 5


async def test_mesh_delete_cascades(client):
    await put(client, "/meshes/default", MESH)
    await put(client, "/meshes/default/dataplanes/web-1", DP)
    assert (await client.delete("/meshes/default")).status == 200
    assert (await (await client.get("/dataplanes")).json())["total"] == 0


async def test_tokens(client):
    await put(client, "/meshes/default", MESH)
    r = await client.post("/tokens/dataplane", json={"name": "web-1", "mesh": "default",
                                                     "tags": {"kuma.io/service": ["web"]}, "validFor": "1h"})
    token = await r.text()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert r.status == 200 and claims["Name"] == "web-1" and claims["Tags"] == {"kuma.io/service": ["web"]}
    r = await client.post("/tokens/dataplane", json={"mesh": "default", "validFor": "soon", "tags": {"a": "b"}})
    body = await r.json()
    assert r.status == 400 and {c["field"] for c in body["causes"]} == {"validFor", 'tags["a"]'}
    r = await client.post("/tokens/dataplane", json={"mesh": "nope", "validFor": "1h"})
    assert r.status == 404
    r = await client.post("/tokens/dataplane/revocations", json={"mesh": "default", "token": token})
    assert (await r.json())["revoked"] == claims["jti"]
    r = await client.post("/tokens/dataplane/revocations", json={"mesh": "default", "token": "garbage"})
    assert r.status == 400


def test_only_loopback_skips_authentication():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.6")
    assert not is_loopback("10.0.0.1") and not is_loopback(None) and not is_loopback("garbage")


async def test_remote_callers_need_a_token():
    """With the loopback door closed (as for an API bound to a non-loopback address), a caller without a token is
    anonymous: 401, a wrong token says why, the admin token opens everything."""
    store = await MemoryStore.open()
    for loopback_admin, anonymous_status in ((True, 200), (False, 401)):
        app = Api(Resources(store), admin_token="s3cret", loopback_admin=loopback_admin).app()
        async with TestClient(TestServer(app)) as c:
            r = await c.get("/meshes")
            assert r.status == anonymous_status
            if r.status == 401:
                assert "Bearer" in (await r.json())["title"]
            r = await c.get("/meshes", headers={"authorization": "Bearer wrong"})
            assert r.status == 401 and "neither the admin token nor a user token" in (await r.json())["title"]
            assert (await c.get("/meshes", headers={"authorization": "Bearer s3cret"})).status == 200
            assert (await c.get("/")).status == 200  # the index is public
    await store.close()


async def test_signing_key_rotation_by_serial(client):
    await put(client, "/meshes/default", MESH)
    old = await (await client.post("/tokens/dataplane", json={"name": "web-1", "validFor": "1h"})).text()
    r = await client.post("/meshes/default/signing-keys")
    assert r.status == 201 and (await r.json())["serial"] == 2
    new = await (await client.post("/tokens/dataplane", json={"name": "web-1", "validFor": "1h"})).text()
    assert jwt.get_unverified_header(old)["kid"] == "1" and jwt.get_unverified_header(new)["kid"] == "2"
    assert (await (await client.get("/meshes/default/signing-keys")).json())["serials"] == [1, 2]
    r = await client.delete("/meshes/default/signing-keys/2")
    assert r.status == 400 and "newest key" in (await r.json())["title"]
    assert (await client.delete("/meshes/default/signing-keys/1")).status == 200
    assert (await client.delete("/meshes/default/signing-keys/1")).status == 404


async def test_verifier_after_rotation():
    from dpagent.controlplane import secrets
    from dpagent.controlplane.auth import DataplaneAuth
    from dpagent.controlplane.tokens import TokenError, issue_token
    from dpagent.model.dataplane import parse_dataplane

    store = await MemoryStore.open()
    await Resources(store).apply(dict(MESH))
    k1 = await secrets.ensure_signing_key(store, "default")
    old = issue_token(k1, name="web-1", mesh="default", tags=None, valid_for=3600)
    await secrets.rotate_signing_key(store, "default")
    dp = parse_dataplane(DP)
    auth = DataplaneAuth(store, ttl=0)
    assert (await auth.verify(old, dp)).name == "web-1", "older tokens keep working after a rotation"
    await secrets.delete_signing_key(store, "default", 1)
    with pytest.raises(TokenError, match="no signing key with KID 1"):
        await auth.verify(old, dp)
    await store.close()


# ---- issue 9: hostile or malformed input is a 4xx naming the problem, never a 500 or a blow-up ----------------

ALIAS_BOMB = (b"type: Mesh\nname: bomb\nmetrics:\n  a: &a [x, x, x, x, x, x, x, x, x]\n"
              b"  b: &b [*a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c]\n"
              b"  e: &e [*d, *d, *d, *d, *d, *d]\n  f: [*e, *e, *e, *e, *e, *e]\n")


async def test_yaml_aliases_are_refused(client):
    """Item 7: nested aliases in a free-form field expanded a 354-byte body into a 28 MB stored Mesh."""
    r = await client.put("/meshes/bomb", data=ALIAS_BOMB, headers={"content-type": "application/yaml"})
    body = await r.json()
    assert r.status == 400 and "aliases" in body["causes"][0]["message"], body
    assert (await client.get("/meshes/bomb")).status == 404


def _alias_bomb_cluster(levels: int) -> str:
    """A cluster whose free-form metadata is nested aliases: each level multiplies the expanded size by 6."""
    lines = ["name: c", "metadata:", "  filterMetadata:", "    x:", "      a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"      a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 6) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


async def test_yaml_aliases_inside_a_proxy_patch_value_are_refused(client):
    """Item 7 again: a MeshProxyPatch `value` is a YAML string inside the body, parsed by the plugin with
    yaml.safe_load; ~400 bytes of aliases in it took seconds and hundreds of MiB while the protobuf was built."""
    await put(client, "/meshes/default", MESH)
    doc = {"type": "MeshProxyPatch", "mesh": "default", "name": "bomb", "spec": {
        "targetRef": {"kind": "Mesh"},
        "default": {"appendModifications": [{"cluster": {"operation": "Add", "value": _alias_bomb_cluster(7)}}]}}}
    status, body = await put(client, "/meshes/default/meshproxypatches/bomb", doc)
    assert status == 400 and "aliases" in body["causes"][0]["message"], body
    assert body["causes"][0]["field"].endswith("appendModifications[0].cluster.value"), body
    assert (await client.get("/meshes/default/meshproxypatches/bomb")).status == 404
    # The same value written out in full is an ordinary cluster patch.
    doc["spec"]["default"]["appendModifications"][0]["cluster"]["value"] = "name: c\nconnectTimeout: 5s\n"
    assert (await put(client, "/meshes/default/meshproxypatches/bomb", doc))[0] == 201


async def test_deep_nesting_huge_offsets_and_wrong_types_are_400s(client):
    """Item 9: each of these was a 500."""
    await put(client, "/meshes/default", MESH)
    deep = "[" * 1000 + "]" * 1000
    r = await client.put("/meshes/default", data=deep.encode(), headers={"content-type": "application/json"})
    assert r.status == 400 and "nested" in (await r.json())["causes"][0]["message"]
    r = await client.put("/meshes/default", data=("a:\n" + "".join("  " * i + "- \n" for i in range(1, 200))).encode(),
                         headers={"content-type": "application/yaml"})
    assert r.status == 400
    r = await client.get(f"/meshes?offset={2**70}")
    assert r.status == 400 and "offset" in (await r.json())["causes"][0]["field"]
    for body in ({"mesh": ["default"], "validFor": "1h"}, {"mesh": "default", "validFor": ["1h"]},
                 {"mesh": "default", "validFor": {"h": 1}}):
        r = await client.post("/tokens/dataplane", json=body)
        assert r.status == 400, (body, await r.text())
    r = await client.post("/tokens/dataplane/revocations", json={"mesh": ["default"], "jti": "x"})
    assert r.status == 400


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "web-1", "tags": {"kuma.io/service": [1, 2]}}, 'tags["kuma.io/service"]'),
    ({"name": "web-1", "tags": {"kuma.io/service": "web"}}, 'tags["kuma.io/service"]'),
    ({"name": "web\n1"}, "name"),
    ({"name": "web-1\n"}, "name"),
    ({"name": "web-1", "validFor": "1000000000000h"}, "validFor"),
    ({"name": "web-1", "validFor": "87601h"}, "validFor"),
    ({"name": "web-1", "validFor": "0s"}, "validFor"),
])
async def test_token_requests_are_validated_like_resources(client, body, field):
    """Item 14: these tokens were issued, and then refused at bootstrap or valid for ~114 million years."""
    await put(client, "/meshes/default", MESH)
    r = await client.post("/tokens/dataplane", json={"mesh": "default", **body})
    assert r.status == 400, await r.text()
    assert field in {c["field"] for c in (await r.json())["causes"]}


async def test_revocations_need_an_existing_mesh(client):
    r = await client.post("/tokens/dataplane/revocations", json={"mesh": "nowhere", "jti": "abc"})
    assert r.status == 404 and "nowhere" in (await r.json())["title"]


async def test_provided_ca_key_is_never_returned(client):
    """Item 15: GET /meshes returned an inline private key."""
    from dpagent.controlplane.ca import generate_root_ca

    cert, key = generate_root_ca("secure", "ca-1")
    mesh = {"type": "Mesh", "name": "secure", "mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "provided", "conf": {"cert": {"inlineString": cert}, "key": {"inlineString": key}}}]}}
    assert (await put(client, "/meshes/secure", mesh))[0] == 201
    for r in (await client.get("/meshes/secure"), await client.get("/meshes")):
        text = await r.text()
        assert "PRIVATE KEY" not in text and "<redacted>" in text
    shown = await (await client.get("/meshes/secure")).json()
    # Applying what `get -o yaml` shows keeps the stored key: the CA check on apply would refuse the marker.
    assert (await put(client, "/meshes/secure", shown))[0] == 200
    shown["mtls"]["backends"][0]["conf"]["key"] = {"inlineString": "not a key"}
    assert (await put(client, "/meshes/secure", shown))[0] == 400


async def test_store_unavailable_is_a_503_not_a_500():
    """A PostgreSQL store that is down or failing over is the caller's cue to retry, not a server bug."""
    class DownStore(MemoryStore):
        async def list(self, kind: str, **kw: Any) -> Any:  # type: ignore[override]
            raise StoreUnavailable("PostgreSQL at db:5432 is unreachable: connection refused")

    store = await DownStore.open()
    async with TestClient(TestServer(Api(Resources(store), admin_token="s3cret").app())) as c:
        r = await c.get("/meshes")
        assert r.status == 503 and "unreachable" in (await r.json())["title"]
    await store.close()
