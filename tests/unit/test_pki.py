"""Key files, CSRs, certificate summaries and chain verification."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dpagent import pki
from dpagent.controlplane import ca

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def mesh_ca() -> tuple[str, str]:
    return ca.generate_root_ca("default", "ca-1", now=NOW)


def test_generate_key_types() -> None:
    assert isinstance(pki.generate_private_key(), ec.EllipticCurvePrivateKey)
    assert pki.generate_private_key().curve.name == "secp256r1"
    assert isinstance(pki.generate_private_key("rsa"), rsa.RSAPrivateKey)
    with pytest.raises(ValueError, match="ecdsa-p256"):
        pki.generate_private_key("dsa")


def test_csr_carries_key_and_optional_hint() -> None:
    key = pki.generate_private_key()
    csr = x509.load_pem_x509_csr(pki.build_csr(key, uri_sans=["spiffe://default/web"]).encode())
    assert csr.is_signature_valid
    assert pki.public_keys_equal(csr.public_key(), key.public_key())
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://default/web"]
    bare = x509.load_pem_x509_csr(pki.build_csr(key).encode())
    assert len(bare.extensions) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_private_key_written_0600_from_creation(tmp_path, monkeypatch) -> None:
    """The temp file must be opened with 0600 (not chmod-ed later): watch os.open's mode and forbid chmod."""
    modes: list[int] = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT:
            modes.append(mode)
        return real_open(path, flags, mode, *a, **kw)

    def no_chmod(*a, **kw):
        raise AssertionError("chmod after creation leaves a window where the key is readable")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old_umask = os.umask(0)  # even with a permissive umask the key must not be group/world readable
    try:
        key = pki.generate_private_key()
        target = tmp_path / "key.pem"
        pki.write_private_key(target, key)
    finally:
        os.umask(old_umask)
    assert modes == [0o600]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    loaded = pki.load_private_key(target.read_bytes())
    assert pki.public_keys_equal(loaded.public_key(), key.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temp file left behind


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_private_key_rewrite_replaces_atomically(tmp_path) -> None:
    target = tmp_path / "key.pem"
    target.write_text("old")
    os.chmod(target, 0o644)
    pki.write_private_key(target, b"-----BEGIN PRIVATE KEY-----\nnew\n")
    assert target.read_bytes().endswith(b"new\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_atomic_cleans_up_on_failure(tmp_path, monkeypatch) -> None:
    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        pki.write_atomic(tmp_path / "cert.pem", b"x")
    assert list(tmp_path.iterdir()) == []


def test_load_private_key_errors_do_not_echo_input() -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nSEKRIT\n-----END PRIVATE KEY-----\n"
    with pytest.raises(pki.PkiError, match="not a PEM private key") as err:
        pki.load_private_key(secret)
    assert "SEKRIT" not in str(err.value)


def test_cert_info(mesh_ca) -> None:
    cert_pem, _ = mesh_ca
    info = pki.cert_info(cert_pem)
    assert info.is_ca
    assert info.uri_sans == ("spiffe://default",)
    assert info.subject == "CN=default,OU=Mesh,O=dpagent"
    assert info.issuer == info.subject
    assert int(info.serial_hex, 16) == x509.load_pem_x509_certificate(cert_pem.encode()).serial_number
    assert info.not_before == dt.datetime.fromtimestamp(NOW - 10, dt.UTC)
    assert info.renew_at(0.5) == info.not_before + (info.not_after - info.not_before) / 2


def test_load_certs_errors() -> None:
    with pytest.raises(pki.PkiError, match="no PEM certificate"):
        pki.load_certs("")
    with pytest.raises(pki.PkiError, match="cannot parse"):
        pki.load_certs("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def _leaf(authority: ca.CertificateAuthority, now: float = NOW, lifetime: float = 3600) -> str:
    return authority.sign_csr(pki.build_csr(pki.generate_private_key()), spiffe_id="spiffe://default/web",
                              lifetime=lifetime, now=now)


def test_verify_chain_ok_and_failures(mesh_ca) -> None:
    authority = ca.CertificateAuthority(*mesh_ca)
    leaf = _leaf(authority)
    anchor = pki.verify_chain(leaf, mesh_ca[0], now=NOW + 60)
    assert anchor.subject.rfc4514_string() == "CN=default,OU=Mesh,O=dpagent"
    other_cert, _ = ca.generate_root_ca("other", "ca-1", now=NOW)
    with pytest.raises(pki.PkiError, match=r"does not chain to any CA in the trust bundle.*CN=other"):
        pki.verify_chain(leaf, other_cert, now=NOW + 60)
    # A bundle holding several CAs (rotation in progress) accepts either.
    pki.verify_chain(leaf, other_cert + mesh_ca[0], now=NOW + 60)
    with pytest.raises(pki.PkiError, match="expired at"):
        pki.verify_chain(leaf, mesh_ca[0], now=NOW + 7200)
    with pytest.raises(pki.PkiError, match=r"not valid until.*clock"):
        pki.verify_chain(leaf, mesh_ca[0], now=NOW - 3600)


def test_verify_chain_rejects_same_name_impostor(mesh_ca) -> None:
    """A CA with the same subject but a different key must not be accepted: signatures are checked, not names."""
    impostor_cert, impostor_key = ca.generate_root_ca("default", "ca-1", now=NOW)
    leaf = _leaf(ca.CertificateAuthority(impostor_cert, impostor_key))
    with pytest.raises(pki.PkiError, match="does not chain"):
        pki.verify_chain(leaf, mesh_ca[0], now=NOW + 60)


def test_verify_chain_through_intermediate(mesh_ca) -> None:
    """An intermediate CA signed by the root, passed after the leaf in the chain file."""
    root = x509.load_pem_x509_certificate(mesh_ca[0].encode())
    root_key = pki.load_private_key(mesh_ca[1])
    inter_key = pki.generate_private_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")])
    start = dt.datetime.fromtimestamp(NOW - 10, dt.UTC)
    inter = (x509.CertificateBuilder().subject_name(name).issuer_name(root.subject).public_key(inter_key.public_key())
             .serial_number(7).not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(root_key, hashes.SHA256()))
    inter_pem = inter.public_bytes(serialization.Encoding.PEM).decode()
    # The intermediate has no SKI/KeyUsage; CertificateAuthority still works (AKI from the public key).
    inter_ca = ca.CertificateAuthority(inter_pem + mesh_ca[0], pki.private_key_to_pem(inter_key))
    assert inter_ca.issuer_chain_pem == inter_pem + mesh_ca[0]
    assert ca.CertificateAuthority(*mesh_ca).issuer_chain_pem == ""  # self-signed root: nothing to append
    leaf = _leaf(inter_ca)
    assert pki.verify_chain(leaf + inter_pem, mesh_ca[0], now=NOW + 60).subject == root.subject
    with pytest.raises(pki.PkiError, match="does not chain"):
        pki.verify_chain(leaf, mesh_ca[0], now=NOW + 60)  # intermediate missing


def test_utc_defaults_to_now() -> None:
    assert abs(pki.utc().timestamp() - time.time()) < 5


def test_describe_key() -> None:
    assert pki.describe_key(ec.generate_private_key(ec.SECP384R1()).public_key()) == "ECDSA P-384"
    assert pki.describe_key(rsa.generate_private_key(65537, 1024).public_key()) == "RSA-1024"


def test_pki_does_not_pull_network_stacks() -> None:
    """The agent imports pki; aiohttp/grpc would add ~10 MB RSS to every agent."""
    code = ("import sys, dpagent.pki; bad = [m for m in ('aiohttp', 'grpc') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
