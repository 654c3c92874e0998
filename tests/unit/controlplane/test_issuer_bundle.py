"""The trust bundle comes from an index of issued leaves, not a read of every DataplaneInsight per question.

The bundle is asked for at every certificate issued and every few seconds by sync; reading every insight each time
made a mass start of N proxies cost N² document reads. The index must still say which roots have unexpired leaves,
including leaves another replica issued (told through `leaf_changed`, which sync calls on the store's events).
"""

from __future__ import annotations

from typing import Any

from dpagent import pki
from dpagent.controlplane.identity import INSIGHT, Issuer
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.store import MemoryStore
from dpagent.model.dataplane import decode_dataplane
from dpagent.model.mesh import decode_mesh


async def _always_true(mesh: str, backend: str) -> bool:
    return True


def mesh(enabled: str) -> dict[str, Any]:
    return {"type": "Mesh", "name": "default", "mtls": {"enabledBackend": enabled, "backends": [
        {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}]}}


def dataplane(i: int) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": f"dp-{i}", "networking": {"address": f"10.0.0.{i + 1}",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": f"svc-{i % 3}"}}]}}


class CountingStore(MemoryStore):
    insight_lists = 0

    async def list(self, kind: str, **kw: Any) -> Any:  # type: ignore[override]
        if kind == INSIGHT:
            self.insight_lists += 1
        return await super().list(kind, **kw)


async def test_issuing_many_leaves_reads_the_insights_once_and_the_bundle_follows_the_leaves() -> None:
    store = await CountingStore.open()
    try:
        resources = Resources(store)
        await resources.apply(mesh("ca-1"))
        dps = [decode_dataplane(dataplane(i)) for i in range(30)]
        for i in range(30):
            await resources.apply(dataplane(i))
        issuer = Issuer(store)
        m1 = decode_mesh(mesh("ca-1"))
        for dp in dps:
            await issuer.issue(m1, dp, pki.build_csr(pki.generate_private_key()))
        assert store.insight_lists == 1, "the bundle re-read every insight per certificate"
        assert (await issuer.bundle(m1))[1] == ("ca-1",)

        # Rotation: ca-2 enabled, ca-1 stays trusted while leaves from it are out there.
        m2 = decode_mesh(mesh("ca-2"))
        assert (await issuer.bundle(m2))[1] == ("ca-1", "ca-2")
        issuer.can_issue = _always_true
        for dp in dps:
            rec = await store.get(INSIGHT, "default", dp.name)
            assert rec is not None
            await store.upsert(INSIGHT, "default", dp.name, {**rec.doc, "mTLS": {**rec.doc["mTLS"],
                                                                               "issuedBackend": "ca-2"}})
            await issuer.leaf_changed("default", dp.name)  # as another replica's write reaches sync
        assert (await issuer.bundle(m2))[1] == ("ca-2",), "ca-1 has no leaf left and must retire"

        # A deleted insight leaves the index too.
        await store.upsert(INSIGHT, "default", "dp-0", {**rec.doc, "name": "dp-0", "mTLS": {
            **rec.doc["mTLS"], "issuedBackend": "ca-1"}})
        await issuer.leaf_changed("default", "dp-0")
        assert (await issuer.bundle(m2))[1] == ("ca-1", "ca-2")
        await store.delete(INSIGHT, "default", "dp-0")
        await issuer.leaf_changed("default", "dp-0")
        assert (await issuer.bundle(m2))[1] == ("ca-2",)
        assert store.insight_lists == 1
    finally:
        await store.close()
