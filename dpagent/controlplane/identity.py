"""Certificate issuing for dataplanes: pick the CA backend, choose the SPIFFE ID, sign, record what was issued.

The CP decides identity from the authenticated Dataplane; the CSR only contributes its public key. What was
issued is recorded per dataplane (a `DataplaneInsight`): `inspect` and `get` show expiry, backend and last
rotation, and the trust bundle keeps a retired root only while a leaf it signed may still be presented.

CA rotation without downtime: the trust bundle (pushed to every proxy over ADS) gains the new root as soon as
`enabledBackend` changes, but leaves are issued from the new root only once every connected proxy of the mesh
has ACKed a bundle that contains it (`can_issue`); until then renewals keep using the previous backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from dpagent import pki
from dpagent.controlplane import datasource, secrets
from dpagent.controlplane.ca import CertificateAuthority, validate_provided_ca
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.xds.names import spiffe_id
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh, MtlsBackend, cert_lifetime_seconds, enabled_backend

INSIGHT = "DataplaneInsight"


class MtlsDisabledError(Exception):
    pass


def leaf_expiry(insight: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat((insight.get("mTLS") or {}).get("certificateExpirationTime", "")).timestamp()
    except ValueError:
        return 0.0


def provided_secret_names(backend: MtlsBackend) -> set[str]:
    conf = backend.conf or {}
    return datasource.secret_names(conf.get("cert")) | datasource.secret_names(conf.get("key"))


def provided_material(backend: MtlsBackend, secrets: Mapping[str, bytes] | None = None,
                      mesh: str = "") -> tuple[str, str]:
    """(cert PEM, key PEM) of a provided backend; `secrets` holds the mesh Secrets its data sources name. Raises
    DataSourceError whose `field` is the path inside the backend (`conf.cert.secret`)."""
    conf = backend.conf or {}
    out = []
    for part in ("cert", "key"):
        try:
            out.append(datasource.load(conf.get(part), secrets, mesh=mesh))
        except datasource.DataSourceError as e:
            raise datasource.DataSourceError(str(e), ".".join(p for p in ("conf", part, e.field) if p)) from None
    return out[0], out[1]


async def provided_material_from(store: ResourceStore, mesh: str, backend: MtlsBackend) -> tuple[str, str]:
    """`provided_material` with the Secrets it names read from the mesh."""
    return provided_material(backend, await datasource.fetch_secrets(store, mesh, provided_secret_names(backend)),
                             mesh)


def provided_problems(backend: MtlsBackend, secrets: Mapping[str, bytes] | None = None,
                      mesh: str = "") -> list[tuple[str, str]]:
    """Every problem with a provided backend's material, as (field, message) relative to the backend."""
    try:
        cert, key = provided_material(backend, secrets, mesh)
    except datasource.DataSourceError as e:
        return [(e.field, str(e))]
    return [("conf", p) for p in validate_provided_ca(cert, key)]


async def _always(mesh: str, backend: str) -> bool:
    return True


LEAF_INDEX_TTL = 60.0  # seconds before a mesh's leaf index is read again whole (events keep it current meanwhile)


class Issuer:
    def __init__(self, store: ResourceStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # mesh → (loaded at, dataplane → (backend that issued its leaf, leaf expiry)). The trust bundle is asked for
        # at every certificate issued and every few seconds by sync; listing every DataplaneInsight each time made
        # 5,000 proxies starting together cost 5,000 × 5,000 document reads.
        self._leaves: dict[str, tuple[float, dict[str, tuple[str, float]]]] = {}
        self.can_issue: Callable[[str, str], Awaitable[bool]] = _always
        self._cas: dict[tuple[str, str, str], CertificateAuthority] = {}

    async def ca(self, mesh: Mesh, backend_name: str) -> CertificateAuthority | None:
        """The CA of a backend: from the mesh spec, or a retired builtin one still in the store; None if gone."""
        spec = next((b for b in (mesh.mtls.backends if mesh.mtls else []) if b.name == backend_name), None)
        material = None
        if spec is not None and spec.type == "provided":
            # Keyed by the material, not the conf: a `{secret: name}` conf stays the same when the Secret changes.
            material = await provided_material_from(self.store, mesh.name, spec)
            digest = hashlib.sha256("\0".join(material).encode()).hexdigest()
        key = (mesh.name, backend_name, digest if material else (repr(spec.conf) if spec else "retired"))
        cached = self._cas.get(key)
        if cached:
            return cached
        if material is not None:
            cert, priv = material
        elif spec is not None:
            rsa = bool(((spec.conf or {}).get("caCert") or {}).get("RSAbits"))
            cert, priv = await secrets.builtin_ca(self.store, mesh.name, backend_name, "rsa" if rsa else "ecdsa-p256")
        else:
            found = await secrets.existing_builtin_ca(self.store, mesh.name, backend_name)
            if found is None:
                return None
            cert, priv = found
        ca = await asyncio.to_thread(CertificateAuthority, cert, priv)
        self._cas[key] = ca
        return ca

    async def bundle(self, mesh: Mesh) -> tuple[str, tuple[str, ...]]:
        """(PEM bundle, backend names): the enabled backend plus every backend with an unexpired leaf out there."""
        names: set[str] = set()
        enabled = enabled_backend(mesh)
        if enabled:
            names.add(enabled.name)
        now = self.clock()
        for backend, expiry in (await self._leaf_index(mesh.name)).values():
            if expiry > now:
                names.add(backend)
        pems, kept = [], []
        for name in sorted(names):
            ca = await self.ca(mesh, name)
            if ca is not None:
                pems.append(ca.cert_pem)
                kept.append(name)
        return "".join(pems), tuple(kept)

    async def _leaf_index(self, mesh: str) -> dict[str, tuple[str, float]]:
        hit = self._leaves.get(mesh)
        if hit is None or time.monotonic() - hit[0] > LEAF_INDEX_TTL:
            index: dict[str, tuple[str, float]] = {}
            for rec in await self.store.list(INSIGHT, mesh=mesh):
                self._index_leaf(index, rec.name, rec.doc)
            hit = self._leaves[mesh] = (time.monotonic(), index)
        return hit[1]

    @staticmethod
    def _index_leaf(index: dict[str, tuple[str, float]], name: str, doc: dict[str, Any] | None) -> None:
        backend = ((doc or {}).get("mTLS") or {}).get("issuedBackend")
        if backend:
            index[name] = (backend, leaf_expiry(doc or {}))
        else:
            index.pop(name, None)

    async def leaf_changed(self, mesh: str, name: str) -> None:
        """A DataplaneInsight changed (issued here or by another replica, or deleted): re-read that one."""
        hit = self._leaves.get(mesh)
        if hit is not None:
            rec = await self.store.get(INSIGHT, mesh, name)
            self._index_leaf(hit[1], name, rec.doc if rec else None)

    async def trust_bundle(self, mesh: Mesh) -> str:
        return (await self.bundle(mesh))[0]

    async def _issuing_backend(self, mesh: Mesh, dp: Dataplane, enabled: MtlsBackend) -> str:
        if await self.can_issue(mesh.name, enabled.name):
            return enabled.name
        previous = await self.store.get(INSIGHT, dp.mesh, dp.name)
        prev_name = ((previous.doc.get("mTLS") or {}).get("issuedBackend") if previous else None) or enabled.name
        if prev_name != enabled.name and await self.ca(mesh, prev_name) is not None:
            return prev_name  # peers do not all trust the new root yet
        return enabled.name

    async def issue(self, mesh: Mesh, dp: Dataplane, csr_pem: str) -> dict[str, Any]:
        enabled = enabled_backend(mesh)
        if enabled is None:
            raise MtlsDisabledError(f"mesh {mesh.name!r} has mTLS disabled; no certificate is needed until "
                                    "mtls.enabledBackend is set")
        backend = await self._issuing_backend(mesh, dp, enabled)
        ca = await self.ca(mesh, backend)
        assert ca is not None
        service = dp.networking.inbound[0].service if dp.networking.inbound else (
            (dp.networking.gateway or {}).get("tags", {}).get("kuma.io/service", dp.name))
        sid = spiffe_id(mesh.name, service)
        leaf = ca.sign_csr(csr_pem, spiffe_id=sid, lifetime=cert_lifetime_seconds(mesh), now=self.clock())
        info = pki.cert_info(leaf)
        previous = await self.store.get(INSIGHT, dp.mesh, dp.name)
        generations = ((previous.doc.get("mTLS") or {}).get("certificateRegenerations", 0) + 1) if previous else 1
        insight = {"type": INSIGHT, "mesh": dp.mesh, "name": dp.name, "mTLS": {
            "certificateExpirationTime": info.not_after.isoformat(), "issuedBackend": backend,
            "serial": info.serial_hex, "spiffeId": sid, "lastCertificateRegeneration": self.clock(),
            "certificateRegenerations": generations}}
        await self.store.upsert(INSIGHT, dp.mesh, dp.name, insight)
        if dp.mesh in self._leaves:
            self._index_leaf(self._leaves[dp.mesh][1], dp.name, insight)
        return {"certificate": leaf + ca.issuer_chain_pem, "caBundle": await self.trust_bundle(mesh),
                "backend": backend, "spiffeId": sid, "notBefore": info.not_before.isoformat(),
                "notAfter": info.not_after.isoformat(),
                "serial": info.serial_hex}

    async def certificate_counts(self, mesh: str, *, near: float = 0.2) -> dict[str, Any]:
        """Per-mesh certificate health: total, expired, and near expiry (less than `near` of the lifetime left)."""
        now = self.clock()
        total = expired = soon = 0
        by_backend: dict[str, int] = {}
        for rec in await self.store.list(INSIGHT, mesh=mesh):
            m = rec.doc.get("mTLS") or {}
            exp = leaf_expiry(rec.doc)
            issued = float(m.get("lastCertificateRegeneration") or now)
            total += 1
            by_backend[m.get("issuedBackend", "?")] = by_backend.get(m.get("issuedBackend", "?"), 0) + 1
            if exp <= now:
                expired += 1
            elif exp - now < near * max(1.0, exp - issued):
                soon += 1
        return {"mesh": mesh, "total": total, "expired": expired, "nearExpiry": soon, "byBackend": by_backend}
