"""Secrets: sealed in the database, never shown in clear by the API, and usable as `{secret: name}` data sources.

The store tests read the SQLite file directly (what a stolen backup holds); the API tests go over real HTTP.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dpagent import pki
from dpagent.controlplane import ca as ca_mod
from dpagent.controlplane.api import Api
from dpagent.controlplane.identity import Issuer
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.controlplane.store.sealed import SealedStore, SecretKeyError, load_key
from dpagent.controlplane.store.sqlite import SqliteStore
from dpagent.model.dataplane import decode_dataplane
from dpagent.model.mesh import decode_mesh

PLAIN = "-----BEGIN TOP SECRET-----\nhunter2-correct-horse\n-----END TOP SECRET-----\n"
B64 = base64.b64encode(PLAIN.encode()).decode()


def secret(name: str = "db-password", data: str = B64, mesh: str = "default") -> dict[str, Any]:
    return {"type": "Secret", "mesh": mesh, "name": name, "data": data}


def raw_rows(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return "\n".join(str(r) for r in conn.execute("SELECT * FROM resources").fetchall())
    finally:
        conn.close()


async def test_the_database_holds_no_secret_in_clear_and_the_store_reads_it_back(tmp_path: Path) -> None:
    box = load_key(str(tmp_path))
    key_file = tmp_path / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    store = await SealedStore.open(await SqliteStore.open(tmp_path / "store.db"), box)
    await store.create("Mesh", "", "default", {"type": "Mesh", "name": "default"})
    await store.create("Secret", "default", "db-password", secret())
    await store.upsert("GlobalSecret", "", "shared", {"type": "GlobalSecret", "name": "shared", "data": B64})
    rec = await store.get("Secret", "default", "db-password")
    assert rec is not None and rec.doc["data"] == B64
    assert [r.doc["data"] for r in await store.list("GlobalSecret")] == [B64]
    await store.close()
    rows = raw_rows(tmp_path / "store.db")
    assert "db-password" in rows  # the row is there...
    assert B64 not in rows and "hunter2" not in rows and "dpagent-aesgcm-v1:" in rows  # ...its data is not

    # Same key (the file is reused): readable after a restart.
    store = await SealedStore.open(await SqliteStore.open(tmp_path / "store.db"), load_key(str(tmp_path)))
    rec = await store.get("Secret", "default", "db-password")
    assert rec is not None and rec.doc["data"] == B64
    await store.close()


async def test_a_replica_with_another_key_refuses_to_start_and_says_how_to_fix_it(tmp_path: Path) -> None:
    first = tmp_path / "a"
    first.mkdir()
    store = await SealedStore.open(await SqliteStore.open(tmp_path / "store.db"), load_key(str(first)))
    await store.close()
    other = base64.b64encode(os.urandom(32)).decode()
    inner = await SqliteStore.open(tmp_path / "store.db")
    with pytest.raises(SecretKeyError, match="same key: copy the key file of the first replica"):
        await SealedStore.open(inner, load_key(str(tmp_path / "b"), key_b64=other))
    await inner.close()
    # The first replica's key given inline works (how replicas on several hosts share it).
    shared = (first / "secrets.key").read_text()
    store = await SealedStore.open(await SqliteStore.open(tmp_path / "store.db"), load_key("", key_b64=shared))
    await store.close()


async def test_secrets_stored_in_clear_by_an_older_cp_are_sealed_at_start(tmp_path: Path) -> None:
    old = await SqliteStore.open(tmp_path / "store.db")  # a CP from before sealing: data as plain base64
    await old.create("Secret", "default", "default.ca-builtin-key-ca-1", secret("default.ca-builtin-key-ca-1"))
    await old.close()
    assert B64 in raw_rows(tmp_path / "store.db")
    store = await SealedStore.open(await SqliteStore.open(tmp_path / "store.db"), load_key(str(tmp_path)))
    rec = await store.get("Secret", "default", "default.ca-builtin-key-ca-1")
    assert rec is not None and rec.doc["data"] == B64
    await store.close()
    assert B64 not in raw_rows(tmp_path / "store.db")


def test_a_malformed_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError, match="32 random bytes in base64"):
        load_key(str(tmp_path), key_b64="c2hvcnQ=")
    with pytest.raises(SecretKeyError, match="cannot read the secrets key file"):
        load_key(str(tmp_path), key_file=str(tmp_path / "missing.key"))


async def test_a_ciphertext_moved_to_another_record_does_not_open(tmp_path: Path) -> None:
    store = await SealedStore.open(await MemoryStore.open(), load_key(str(tmp_path)))
    await store.create("Secret", "default", "a", secret("a"))
    sealed = (await store.inner.get("Secret", "default", "a")).doc["data"]  # type: ignore[union-attr]
    await store.inner.create("Secret", "default", "b", {**secret("b"), "data": sealed})
    with pytest.raises(SecretKeyError, match="does not verify"):
        await store.get("Secret", "default", "b")
    await store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], SealedStore]]:
    store = await SealedStore.open(await MemoryStore.open(), load_key(str(tmp_path)))
    async with TestClient(TestServer(Api(Resources(store), admin_token="t").app())) as c:
        assert (await c.put("/meshes/default", json={"type": "Mesh", "name": "default"})).status == 201
        yield c, store
    await store.close()


async def test_get_never_returns_the_data_and_reapplying_what_get_shows_keeps_it(api) -> None:
    c, store = api
    r = await c.put("/meshes/default/secrets/db-password", json=secret())
    assert r.status == 201, await r.text()
    one = await (await c.get("/meshes/default/secrets/db-password")).json()
    assert one["data"] == "<redacted>" and one["name"] == "db-password" and one["mesh"] == "default"
    listed = await (await c.get("/meshes/default/secrets")).json()
    assert [i["name"] for i in listed["items"]] == ["db-password"] and listed["total"] == 1
    assert B64 not in str(listed) and B64 not in str(await (await c.get("/secrets")).json())
    # `get -o yaml | apply -f -` round trip: the stored value survives the marker.
    assert (await c.put("/meshes/default/secrets/db-password", json=one)).status == 200
    rec = await store.get("Secret", "default", "db-password")
    assert rec is not None and rec.doc["data"] == B64
    # A new secret cannot be created from the marker.
    r = await c.put("/meshes/default/secrets/other", json={**one, "name": "other"})
    assert r.status == 400 and [x["field"] for x in (await r.json())["causes"]] == ["data"]


async def test_the_control_planes_own_secrets_are_not_served_listed_or_writable(api) -> None:
    c, _ = api
    # The mesh's token signing key exists (made with the mesh) but is not the API's to show.
    assert (await (await c.get("/meshes/default/secrets")).json())["total"] == 0
    r = await c.get("/meshes/default/secrets/dataplane-token-signing-key-default-1")
    assert r.status == 404
    r = await c.put("/meshes/default/secrets/dataplane-token-signing-key-default-2",
                    json=secret("dataplane-token-signing-key-default-2"))
    assert r.status == 400 and "reserved" in str(await r.json())
    assert (await (await c.get("/global-secrets")).json())["items"] == []


async def test_validation_reports_every_problem_with_its_path_and_never_echoes_the_data(api) -> None:
    c, _ = api
    r = await c.put("/meshes/default/secrets/Bad_Name", json={"type": "Secret", "mesh": "default",
                                                             "name": "Bad_Name", "data": "not base64 hunter2!",
                                                             "extra": 1})
    body = await r.json()
    assert r.status == 400
    assert [x["field"] for x in body["causes"]] == ["extra", "name", "data"]
    assert "hunter2" not in str(body)
    r = await c.put("/global-secrets/g", json={"type": "GlobalSecret", "name": "g", "mesh": "default", "data": B64})
    assert r.status == 400 and "mesh" in [x["field"] for x in (await r.json())["causes"]]
    assert (await c.put("/global-secrets/g", json={"type": "GlobalSecret", "name": "g", "data": B64})).status == 201


def provided_mesh(cert: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "provided", "conf": {"cert": cert, "key": key}}]}}


async def test_a_provided_ca_reads_its_key_from_a_secret_and_follows_a_secret_change(api) -> None:
    c, store = api
    cert_pem, key_pem = ca_mod.generate_root_ca("default", "ca-1")
    # A secret that does not exist: refused with the path and the fix.
    r = await c.put("/meshes/default", json=provided_mesh({"inlineString": cert_pem}, {"secret": "ca-key"}))
    body = await r.json()
    assert r.status == 400, body
    assert [(x["field"], "does not exist" in x["message"] and "create it first" in x["message"])
            for x in body["causes"]] == [("mtls.backends[0].conf.key.secret", True)]
    # With the secrets in place the mesh is accepted, and never shows the key.
    for name, pem in (("ca-cert", cert_pem), ("ca-key", key_pem)):
        r = await c.put(f"/meshes/default/secrets/{name}", json=secret(name, base64.b64encode(pem.encode()).decode()))
        assert r.status == 201, await r.text()
    doc = provided_mesh({"secret": "ca-cert"}, {"secret": "ca-key"})
    r = await c.put("/meshes/default", json=doc)
    assert r.status == 200, await r.text()
    # In use: deleting the key would break the CA.
    r = await c.delete("/meshes/default/secrets/ca-key")
    assert r.status == 409 and "mtls.backends[0].conf.key.secret" in (await r.json())["title"]

    issuer = Issuer(store)
    dp = decode_dataplane({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}})
    leaf = await issuer.issue(decode_mesh(doc), dp, pki.build_csr(pki.generate_private_key()))
    assert leaf["caBundle"] == cert_pem  # signed by the CA the secrets hold

    # The secrets change (a new CA): the issuer follows without any change to the Mesh document.
    new_cert, new_key = ca_mod.generate_root_ca("default", "ca-1")
    for name, pem in (("ca-cert", new_cert), ("ca-key", new_key)):
        r = await c.put(f"/meshes/default/secrets/{name}", json=secret(name, base64.b64encode(pem.encode()).decode()))
        assert r.status == 200
    leaf = await issuer.issue(decode_mesh(doc), dp, pki.build_csr(pki.generate_private_key()))
    assert leaf["caBundle"] == new_cert


async def test_a_secret_change_rebuilds_the_mesh_and_its_trust_bundle(tmp_path: Path) -> None:
    from dpagent.controlplane.store.base import ChangeEvent
    from dpagent.controlplane.xds.sync import XdsSync

    store = await SealedStore.open(await MemoryStore.open(), load_key(str(tmp_path)))
    resources = Resources(store)
    await resources.apply({"type": "Mesh", "name": "default"})
    cert_pem, key_pem = ca_mod.generate_root_ca("default", "ca-1")
    for name, pem in (("ca-cert", cert_pem), ("ca-key", key_pem)):
        await resources.apply(secret(name, base64.b64encode(pem.encode()).decode()))
    await resources.apply(provided_mesh({"secret": "ca-cert"}, {"secret": "ca-key"}))
    issuer = Issuer(store)
    sync = XdsSync(store, cache=None, bundle=issuer.bundle)
    state = await sync._rebuild("default")
    assert state is not None and state.ctx.trust_bundle == cert_pem

    events: list[ChangeEvent] = []
    sub = await store.subscribe()
    new_cert, _ = ca_mod.generate_root_ca("default", "ca-1", key_pem=key_pem)  # re-issued root, same key
    await resources.apply(secret("ca-cert", base64.b64encode(new_cert.encode()).decode()))
    await resources.apply(secret("unrelated"))
    await resources.apply({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}})
    while sub.pending():
        events.append(await sub.__anext__())
    for ev in events:
        sync._on_event(ev)
    assert sync._dirty == {"default": None}, "a user Secret change re-reads the whole mesh"
    state, _ = await sync._change("default", sync._dirty.pop("default"))
    assert state is not None and state.ctx.trust_bundle == new_cert

    # The CP's own secrets (a revocation, a rotated signing key) change no Envoy config.
    from dpagent.controlplane import secrets as cp_secrets

    await cp_secrets.revoke(store, "default", "some-jti")
    while sub.pending():
        sync._on_event(await sub.__anext__())
    assert sync._dirty == {}
    sub.close()
    await store.close()


async def test_an_external_services_ca_comes_from_a_secret_and_follows_its_change(tmp_path: Path) -> None:
    """MeshExternalService `caCert: {secret: name}`: the sync reads the Secret for the parser, the cluster's
    validation context carries its PEM, and a Secret change reaches the cluster without touching the service."""
    from dpagent.controlplane.store.base import ChangeEvent
    from dpagent.controlplane.xds.snapshot import CLUSTER
    from dpagent.controlplane.xds.sync import XdsSync, proxy_snapshot

    store = await SealedStore.open(await MemoryStore.open(), load_key(str(tmp_path)))
    resources = Resources(store)
    await resources.apply({"type": "Mesh", "name": "default"})
    first, _ = ca_mod.generate_root_ca("default", "ext-ca")
    await resources.apply(secret("ext-ca", base64.b64encode(first.encode()).decode()))
    await resources.apply({"type": "MeshExternalService", "mesh": "default", "name": "httpbin", "spec": {
        "match": {"type": "HostnameGenerator", "port": 443, "protocol": "http"},
        "endpoints": [{"address": "10.9.0.1", "port": 8443}],
        "tls": {"enabled": True, "verification": {"serverName": "ext.test", "caCert": {"secret": "ext-ca"}}}}})
    await resources.apply({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
        "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}})
    sync = XdsSync(store, cache=None)

    def cluster_text(state: Any) -> str:
        snap = proxy_snapshot(state, state.by_name["web-1"])
        return str(snap.resources(CLUSTER)["extsvc/httpbin"].message)

    state = await sync._rebuild("default")
    assert state is not None
    assert first.splitlines()[1] in cluster_text(state)

    sub = await store.subscribe()
    second, _ = ca_mod.generate_root_ca("default", "ext-ca-2")
    await resources.apply(secret("ext-ca", base64.b64encode(second.encode()).decode()))
    events: list[ChangeEvent] = []
    while sub.pending():
        events.append(await sub.__anext__())
    for ev in events:
        sync._on_event(ev)
    state, _ = await sync._change("default", sync._dirty.pop("default"))
    assert state is not None
    text = cluster_text(state)
    assert second.splitlines()[1] in text and first.splitlines()[1] not in text
    sub.close()
    await store.close()
