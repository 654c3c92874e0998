"""Certificate issuing for dataplanes: pick the CA backend, choose the SPIFFE ID, sign, record what was issued.

The CP decides identity from the authenticated Dataplane; the CSR only contributes its public key. What was
issued is recorded per dataplane (a `DataplaneInsight`), which lets xDS turn on mTLS for a proxy only once its
identity files exist, and lets `inspect`/`get` show expiry, backend and last rotation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dpagent import pki
from dpagent.controlplane import secrets
from dpagent.controlplane.ca import CertificateAuthority
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.xds.names import spiffe_id
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh, cert_lifetime_seconds, enabled_backend

INSIGHT = "DataplaneInsight"


class MtlsDisabledError(Exception):
    pass


class Issuer:
    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._cas: dict[tuple[str, str], CertificateAuthority] = {}

    async def ca(self, mesh: str, backend: str, key_type: str = "ecdsa-p256") -> CertificateAuthority:
        cached = self._cas.get((mesh, backend))
        if cached:
            return cached
        cert, key = await secrets.builtin_ca(self.store, mesh, backend, key_type)
        ca = await asyncio.to_thread(CertificateAuthority, cert, key)
        self._cas[(mesh, backend)] = ca
        return ca

    async def trust_bundle(self, mesh: Mesh) -> str:
        """Roots every proxy in the mesh trusts: all builtin backends that exist (both during a CA switch)."""
        pems = []
        for b in (mesh.mtls.backends if mesh.mtls else []):
            if b.type == "builtin":
                pems.append((await self.ca(mesh.name, b.name)).cert_pem)
        return "".join(pems)

    async def issue(self, mesh: Mesh, dp: Dataplane, csr_pem: str) -> dict[str, Any]:
        backend = enabled_backend(mesh)
        if backend is None:
            raise MtlsDisabledError(f"mesh {mesh.name!r} has mTLS disabled; no certificate is needed until "
                                    "mtls.enabledBackend is set")
        ca = await self.ca(mesh.name, backend.name)
        service = dp.networking.inbound[0].service if dp.networking.inbound else (
            (dp.networking.gateway or {}).get("tags", {}).get("kuma.io/service", dp.name))
        sid = spiffe_id(mesh.name, service)
        leaf = ca.sign_csr(csr_pem, spiffe_id=sid, lifetime=cert_lifetime_seconds(mesh))
        info = pki.cert_info(leaf)
        insight = {"type": INSIGHT, "mesh": dp.mesh, "name": dp.name, "mTLS": {
            "certificateExpirationTime": info.not_after.isoformat(), "issuedBackend": backend.name,
            "serial": info.serial_hex, "spiffeId": sid, "lastCertificateRegeneration": time.time()}}
        previous = await self.store.get(INSIGHT, dp.mesh, dp.name)
        generations = ((previous.doc.get("mTLS") or {}).get("certificateRegenerations", 0) + 1) if previous else 1
        insight["mTLS"]["certificateRegenerations"] = generations
        await self.store.upsert(INSIGHT, dp.mesh, dp.name, insight)
        return {"certificate": leaf + ca.issuer_chain_pem, "caBundle": await self.trust_bundle(mesh),
                "backend": backend.name, "spiffeId": sid, "notAfter": info.not_after.isoformat(),
                "serial": info.serial_hex}
