"""Replicas share one CP CA and one admin token through the store: an agent pinning ca.pem trusts every replica,
and the CLI's admin token works on every replica."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography import x509

from dpagent.controlplane import cp_tls
from dpagent.controlplane.app import ensure_cp_tls
from dpagent.controlplane.store import MemoryStore


async def test_replicas_starting_together_share_one_ca_and_one_token(tmp_path: Path) -> None:
    store = MemoryStore()
    dirs = [tmp_path / f"cp-{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    cas = await asyncio.gather(*(cp_tls.shared_ca(store, d) for d in dirs))
    tokens = await asyncio.gather(*(cp_tls.shared_admin_token(store, d) for d in dirs))
    assert len(set(cas)) == 1 and len({t for t, _ in tokens}) == 1
    for d in dirs:
        assert (d / "admin-token").read_text() == tokens[0][0]
    ca = cas[0]
    servers = [ensure_cp_tls(d, (f"127.0.0.{i + 1}",), ca) for i, d in enumerate(dirs)]
    root = x509.load_pem_x509_certificate(ca[0].encode())
    for i, (ca_pem, cert_pem, _) in enumerate(servers):
        assert ca_pem == ca[0] and (dirs[i] / "ca.pem").read_text() == ca[0]
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cert.verify_directly_issued_by(root)  # every replica's server certificate chains to the one CA
        ips = {str(a) for a in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
               .get_values_for_type(x509.IPAddress)}
        assert f"127.0.0.{i + 1}" in ips


async def test_a_cp_from_before_keeps_the_ca_its_agents_pin(tmp_path: Path) -> None:
    """A CP that kept its CA and token only in its data dir offers them to the (empty) store on upgrade."""
    from dpagent.controlplane import ca as ca_mod

    made = ca_mod.generate_cp_tls([])
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.pem").write_text(made.ca_cert_pem)
    (tls / "ca-key.pem").write_text(made.ca_key_pem)
    (tmp_path / "admin-token").write_text("old-token\n")
    store = MemoryStore()
    cert, key = await cp_tls.shared_ca(store, tmp_path)
    assert cert.strip() == made.ca_cert_pem.strip() and key.strip() == made.ca_key_pem.strip()
    assert (await cp_tls.shared_admin_token(store, tmp_path))[0] == "old-token"
    # A second replica with its own, different data dir adopts the stored ones.
    other = tmp_path / "other"
    other.mkdir()
    assert (await cp_tls.shared_ca(store, other))[0] == cert
    assert (await cp_tls.shared_admin_token(store, other))[0] == "old-token"
