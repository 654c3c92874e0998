"""Mesh CA: root generation, CSR signing (identity chosen by the CP), provided-CA checks, CP TLS, real handshakes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpagent import pki
from dpagent.controlplane import ca
from dpagent.errors import ControlPlaneRejected

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def root() -> tuple[str, str]:
    return ca.generate_root_ca("default", "ca-1", now=NOW)


@pytest.fixture(scope="module")
def authority(root) -> ca.CertificateAuthority:
    return ca.CertificateAuthority(*root)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa"])
def test_root_ca_shape(key_type) -> None:
    cert_pem, key_pem = ca.generate_root_ca("payments", "ca-1", key_type=key_type, now=NOW)
    cert = _cert(cert_pem)
    assert cert.subject.rfc4514_string() == "CN=payments,OU=Mesh,O=dpagent"
    assert cert.issuer == cert.subject
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://payments"]
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25
    assert 9.99 < years < 10.01
    cert.verify_directly_issued_by(cert)
    key = pki.load_private_key(key_pem)
    assert isinstance(key, ec.EllipticCurvePrivateKey if key_type == "ecdsa-p256" else rsa.RSAPrivateKey)
    assert ca.validate_provided_ca(cert_pem, key_pem, now=NOW) == []


def test_root_ca_requires_names() -> None:
    with pytest.raises(ValueError, match="mesh"):
        ca.generate_root_ca("", "ca-1")
    with pytest.raises(ValueError, match="backend"):
        ca.generate_root_ca("default", "")


def test_leaf_shape_ignores_csr_names(root, authority) -> None:
    key = pki.generate_private_key()
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://default/admin"),
                                                           x509.DNSName("evil.example.com")]), critical=False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    csr_pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    leaf = _cert(authority.sign_csr(csr_pem, spiffe_id="spiffe://default/web", lifetime=86400, now=NOW))

    assert leaf.subject == x509.Name([])
    san = _ext(leaf, x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280: required when the subject is empty
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://default/web")]
    assert _ext(leaf, x509.BasicConstraints).value.ca is False
    ku = _ext(leaf, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and ku.key_agreement and not ku.key_cert_sign
    assert set(_ext(leaf, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.not_valid_before_utc == dt.datetime.fromtimestamp(NOW - 10, dt.UTC)
    assert leaf.not_valid_after_utc == dt.datetime.fromtimestamp(NOW + 86400, dt.UTC)
    assert pki.public_keys_equal(leaf.public_key(), key.public_key())
    root_cert = _cert(root[0])
    assert leaf.issuer == root_cert.subject
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(root_cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert 0 < leaf.serial_number < 2**128


def test_leaf_chains_with_cryptography_verifier(root, authority) -> None:
    """The webpki-profile client verifier is strict (critical SAN, AKI, EKU); the leaf must pass it."""
    leaf = _cert(authority.sign_csr(pki.build_csr(pki.generate_private_key()), spiffe_id="spiffe://default/web",
                                    lifetime=3600, now=NOW))
    verifier = (xv.PolicyBuilder().store(xv.Store([_cert(root[0])]))
                .time(dt.datetime.fromtimestamp(NOW + 60, dt.UTC)).build_client_verifier())
    result = verifier.verify(leaf, [])
    assert result.subjects == [x509.UniformResourceIdentifier("spiffe://default/web")]
    assert result.chain[-1] == _cert(root[0])
    other = _cert(ca.generate_root_ca("default", "ca-2", now=NOW)[0])
    with pytest.raises(xv.VerificationError):
        (xv.PolicyBuilder().store(xv.Store([other])).time(dt.datetime.fromtimestamp(NOW + 60, dt.UTC))
         .build_client_verifier().verify(leaf, []))


def test_rsa_csr_and_rsa_ca(root) -> None:
    rsa_root = ca.CertificateAuthority(*ca.generate_root_ca("default", "ca-rsa", key_type="rsa", now=NOW))
    leaf = _cert(rsa_root.sign_csr(pki.build_csr(pki.generate_private_key("rsa")), spiffe_id="spiffe://default/a",
                                   lifetime=60, now=NOW))
    ku = _ext(leaf, x509.KeyUsage).value
    assert ku.key_encipherment and not ku.key_agreement  # keyAgreement only for EC keys
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)


def test_p384_csr_accepted(authority) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    authority.sign_csr(pki.build_csr(key), spiffe_id="spiffe://default/a", lifetime=60, now=NOW)


def _csr_for(key: object) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


@pytest.mark.parametrize(("make_key", "described"), [
    (lambda: ec.generate_private_key(ec.SECP521R1()), "ECDSA P-521"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA secp256k1"),
    (lambda: rsa.generate_private_key(65537, 1024), "RSA-1024"),
    (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
])
def test_weak_or_odd_keys_rejected(authority, make_key, described) -> None:
    with pytest.raises(ca.CSRError, match=f"CSR key is {described}, which is not accepted; use ECDSA P-256") as err:
        authority.sign_csr(_csr_for(make_key()), spiffe_id="spiffe://default/a", lifetime=60)
    assert isinstance(err.value, ControlPlaneRejected)


def test_oversized_csr_rejected(authority) -> None:
    csr = pki.build_csr(pki.generate_private_key(), uri_sans=[f"spiffe://default/{'x' * 200}/{i}" for i in range(50)])
    with pytest.raises(ca.CSRError, match="more than the 8192-byte limit"):
        authority.sign_csr(csr, spiffe_id="spiffe://default/a", lifetime=60)


@pytest.mark.parametrize(("body", "fragment"), [
    ("", "not a PEM CSR"),
    ("hello", "not a PEM CSR"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "cannot be parsed"),
])
def test_garbage_csr_rejected(authority, body, fragment) -> None:
    with pytest.raises(ca.CSRError, match=fragment):
        authority.sign_csr(body, spiffe_id="spiffe://default/a", lifetime=60)


def test_csr_with_bad_signature_rejected(authority) -> None:
    """Proof of possession: a CSR whose public key was swapped after signing must fail."""
    key_a, key_b = pki.generate_private_key(), pki.generate_private_key()
    der_a = x509.load_pem_x509_csr(pki.build_csr(key_a).encode()).public_bytes(serialization.Encoding.DER)
    spki = lambda k: k.public_key().public_bytes(serialization.Encoding.DER,  # noqa: E731
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    forged_der = der_a.replace(spki(key_a), spki(key_b))
    assert forged_der != der_a
    forged = x509.load_der_x509_csr(forged_der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ca.CSRError, match="CSR signature is invalid"):
        authority.sign_csr(forged, spiffe_id="spiffe://default/a", lifetime=60)


def test_sign_csr_argument_checks(authority) -> None:
    csr = pki.build_csr(pki.generate_private_key())
    with pytest.raises(ValueError, match="spiffe://"):
        authority.sign_csr(csr, spiffe_id="default/web", lifetime=60)
    with pytest.raises(ValueError, match="positive"):
        authority.sign_csr(csr, spiffe_id="spiffe://default/web", lifetime=0)


def test_leaf_capped_at_ca_expiry() -> None:
    short = ca.CertificateAuthority(*ca.generate_root_ca("default", "ca-1", validity=3600, now=NOW))
    csr = pki.build_csr(pki.generate_private_key())
    leaf = _cert(short.sign_csr(csr, spiffe_id="spiffe://default/a", lifetime=86400, now=NOW))
    assert leaf.not_valid_after_utc == short.info.not_after
    with pytest.raises(ca.CAError, match=r"mesh CA expired at .* rotate the CA"):
        short.sign_csr(csr, spiffe_id="spiffe://default/a", lifetime=60, now=NOW + 7200)


def test_ca_rejects_mismatched_key(root) -> None:
    _, other_key = ca.generate_root_ca("default", "ca-2")
    with pytest.raises(ca.CAError, match="does not belong to the CA certificate"):
        ca.CertificateAuthority(root[0], other_key)


_segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=20)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(requested=st.lists(_segment, min_size=0, max_size=4), service=_segment)
def test_csr_sans_never_reach_leaf(authority, requested, service) -> None:
    csr = pki.build_csr(pki.generate_private_key(), uri_sans=[f"spiffe://evil/{r}" for r in requested] or None)
    leaf = _cert(authority.sign_csr(csr, spiffe_id=f"spiffe://default/{service}", lifetime=60, now=NOW))
    assert pki.cert_info(leaf).uri_sans == (f"spiffe://default/{service}",)


# --- provided CA validation ------------------------------------------------------------------------------------

def _self_signed(*, ca_flag: bool | None, key_cert_sign: bool | None, start: float, days: float) -> tuple[str, str]:
    key = pki.generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my CA")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
         .not_valid_before(dt.datetime.fromtimestamp(start, dt.UTC))
         .not_valid_after(dt.datetime.fromtimestamp(start + days * 86400, dt.UTC)))
    if ca_flag is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
    if key_cert_sign is not None:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, key_cert_sign, False, False, False),
                            critical=True)
    cert = b.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pki.private_key_to_pem(key).decode()


def test_provided_ca_reports_every_problem(root) -> None:
    cert, _ = _self_signed(ca_flag=False, key_cert_sign=False, start=NOW - 10 * 86400, days=1)
    problems = ca.validate_provided_ca(cert, root[1], now=NOW)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "does not match the CA certificate" in text
    assert "not a CA: BasicConstraints has CA=false" in text
    assert "lacks keyCertSign" in text
    assert "expired at" in text


def test_provided_ca_missing_extensions_and_future() -> None:
    cert, key = _self_signed(ca_flag=None, key_cert_sign=None, start=NOW + 86400, days=30)
    problems = ca.validate_provided_ca(cert, key, now=NOW)
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "no BasicConstraints extension" in text and "no KeyUsage extension" in text
    assert "not yet valid" in text


def test_provided_ca_not_pem() -> None:
    problems = ca.validate_provided_ca("nope", "also nope")
    assert problems == ["CA certificate: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
                        "CA key: cannot load the private key: it is not a PEM private key (expected -----BEGIN "
                        "PRIVATE KEY----- or similar)"]


# --- CP TLS ----------------------------------------------------------------------------------------------------

def test_cp_tls_sans_and_chain() -> None:
    tls = ca.generate_cp_tls(["cp.example.com", "10.0.0.5", "[fd00::1]", "CP.example.com", "127.0.0.1"])
    assert "KEY" not in repr(tls)
    ca_cert, cert = _cert(tls.ca_cert_pem), _cert(tls.cert_pem)
    assert ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dpagent control plane CA"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in
                                                       ("127.0.0.1", "::1", "10.0.0.5", "fd00::1")]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3652
    store = xv.Store([ca_cert])
    for subject in (xv.DNSName("cp.example.com"), xv.DNSName("localhost"),
                    xv.IPAddress(ipaddress.ip_address("::1")), xv.IPAddress(ipaddress.ip_address("10.0.0.5"))):
        xv.PolicyBuilder().store(store).build_server_verifier(subject).verify(cert, [])
    with pytest.raises(xv.VerificationError):
        xv.PolicyBuilder().store(store).build_server_verifier(xv.DNSName("other.example.com")).verify(cert, [])


# --- real TLS --------------------------------------------------------------------------------------------------

def _ctx_files(tmp_path, name: str, cert_pem: str, key: pki.PrivateKey) -> tuple[str, str]:
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_text(cert_pem)
    pki.write_private_key(key_file, key)
    return str(cert_file), str(key_file)


def test_mutual_tls_handshake_with_spiffe_leaves(tmp_path) -> None:
    """Two workload leaves from CSRs complete a real mutual-TLS handshake (strict X.509 checks on both sides)."""
    root_pem, root_key = ca.generate_root_ca("default", "ca-1")
    authority = ca.CertificateAuthority(root_pem, root_key)
    bundle = tmp_path / "ca.pem"
    bundle.write_text(root_pem)
    contexts = {}
    for name, purpose in (("server", ssl.PROTOCOL_TLS_SERVER), ("client", ssl.PROTOCOL_TLS_CLIENT)):
        key = pki.generate_private_key()
        leaf = authority.sign_csr(pki.build_csr(key), spiffe_id=f"spiffe://default/{name}", lifetime=600)
        ctx = ssl.SSLContext(purpose)
        ctx.load_cert_chain(*_ctx_files(tmp_path, name, leaf, key))
        ctx.load_verify_locations(cafile=str(bundle))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False  # SPIFFE leaves carry a URI SAN, not a host name
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        contexts[name] = ctx

    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with contexts["server"].wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(tls.recv(5).upper())
            except Exception as exc:  # surfaced by the assertion below
                seen["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                contexts["client"].wrap_socket(raw) as tls:
            tls.sendall(b"hello")
            assert tls.recv(5) == b"HELLO"
            server_cert = tls.getpeercert()
        thread.join(10)
    assert "error" not in seen, seen.get("error")
    assert ("URI", "spiffe://default/server") in server_cert["subjectAltName"]
    assert ("URI", "spiffe://default/client") in seen["peer"]["subjectAltName"]  # type: ignore[index]


def test_cp_tls_handshake(tmp_path) -> None:
    """The CP cert works for an HTTPS-style handshake with hostname checking against 'localhost'."""
    tls = ca.generate_cp_tls(["cp.internal"])
    cert_file, key_file = tmp_path / "cp.crt", tmp_path / "cp.key"
    cert_file.write_text(tls.cert_pem)
    pki.write_private_key(key_file, tls.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert_file), str(key_file))
    client_ctx = ssl.create_default_context(cadata=tls.ca_cert_pem)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    errors: list[Exception] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"ok")
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.recv(2) == b"ok"
        thread.join(10)
    assert not errors, errors
