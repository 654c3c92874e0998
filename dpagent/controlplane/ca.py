"""Mesh certificate authority (builtin or provided) that turns dataplane CSRs into SPIFFE leaves, plus the CP's TLS.

The CSR only proves the agent holds the key; identity (the SPIFFE ID) is always chosen by the control plane.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpagent import pki
from dpagent.errors import ControlPlaneRejected
from dpagent.timefmt import human_time

TEN_YEARS = 10 * 365.25 * 86400.0
MAX_CSR_BYTES = 8 * 1024
BACKDATE = 10.0  # seconds: tolerate small clock skew between CP and the peers that check the leaf
_ALLOWED_CURVES = ("secp256r1", "secp384r1")


class CSRError(ControlPlaneRejected):
    """The agent sent a CSR we will not sign; retrying the same CSR cannot help."""


class CAError(pki.PkiError):
    """The CA material itself is unusable (bad provided CA, key mismatch)."""


@dataclass(frozen=True)
class CpTls:
    ca_cert_pem: str
    ca_key_pem: str
    cert_pem: str
    key_pem: str

    def __repr__(self) -> str:  # keys are secrets: keep them out of logs and tracebacks
        return "CpTls(<certificates and keys>)"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _hash_for(key: pki.PrivateKey) -> hashes.HashAlgorithm:
    """Match the hash to the key strength (P-384 with SHA-384), as the webpki profiles expect."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _ca_extensions(builder: x509.CertificateBuilder, public_key: object) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False))


def generate_root_ca(mesh: str, backend: str, key_type: str = "ecdsa-p256", validity: float = TEN_YEARS,
                     now: float | None = None, key_pem: str | None = None) -> tuple[str, str]:
    """Builtin mesh root. `backend` only names where it is stored; P-256 by default because CA signing is on the
    hot path of every certificate request (RSA signing is ~50x slower). `key_pem` makes the root for a key that
    already exists (completing a CA whose creator stopped after storing the key)."""
    if not mesh:
        raise ValueError("mesh name is required for a mesh CA")
    if not backend:
        raise ValueError("CA backend name is required")
    key = pki.load_private_key(key_pem) if key_pem else pki.generate_private_key(key_type)
    start = pki.utc(now) - dt.timedelta(seconds=BACKDATE)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpagent"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Mesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, mesh)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(_serial()).not_valid_before(start)
               .not_valid_after(start + dt.timedelta(seconds=validity))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")]),
                              critical=False))
    cert = _ca_extensions(builder, key.public_key()).sign(key, _hash_for(key))
    return _pem(cert), pki.private_key_to_pem(key).decode()


def _serial() -> int:
    """128 random bits: unpredictable serials are what CAs use to defeat chosen-prefix collisions."""
    return secrets.randbits(128) or 1


class CertificateAuthority:
    """A loaded CA. Parsing and key checks happen once here, so `sign_csr` does only per-request work."""

    def __init__(self, cert_pem: str | bytes, key_pem: str | bytes) -> None:
        certs = pki.load_certs(cert_pem)
        self._cert = certs[0]
        self._key = pki.load_private_key(key_pem)
        if not pki.public_keys_equal(self._key.public_key(), self._cert.public_key()):
            raise CAError("the CA private key does not belong to the CA certificate")
        self._hash = _hash_for(self._key)
        self._is_ec = isinstance(self._key, ec.EllipticCurvePrivateKey)
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        self._cert_pem = _pem(self._cert)
        self_signed = self._cert.issuer == self._cert.subject
        self._issuer_chain_pem = "" if self_signed else "".join(_pem(c) for c in certs)
        self._not_after = self._cert.not_valid_after_utc
        self._eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

    @property
    def cert_pem(self) -> str:
        """The CA certificate, i.e. this CA's contribution to the mesh trust bundle."""
        return self._cert_pem

    @property
    def issuer_chain_pem(self) -> str:
        """What to append after a leaf: nothing for a self-signed root; for an intermediate (a provided CA), the CA
        cert and any parents given with it, so peers that trust only the root can still build the path."""
        return self._issuer_chain_pem

    @property
    def info(self) -> pki.CertInfo:
        return pki.cert_info(self._cert)

    def sign_csr(self, csr_pem: str | bytes, *, spiffe_id: str, lifetime: float, now: float | None = None) -> str:
        """Issue a leaf for `spiffe_id`, ignoring every name in the CSR. Capped at the CA's own expiry, since a
        leaf outliving its issuer would fail verification anyway."""
        if not spiffe_id.startswith("spiffe://"):
            raise ValueError(f"SPIFFE ID must start with spiffe://, got {spiffe_id!r}")
        if lifetime <= 0:
            raise ValueError("lifetime must be positive (seconds)")
        csr = self._load_csr(csr_pem)
        public_key = csr.public_key()
        start = pki.utc(now) - dt.timedelta(seconds=BACKDATE)
        end = min(start + dt.timedelta(seconds=lifetime + BACKDATE), self._not_after)
        if end <= start:
            raise CAError(f"the mesh CA expired at {human_time(self._not_after, now=pki.utc(now).timestamp())}; "
                          "rotate the CA")
        ec_key = isinstance(public_key, ec.EllipticCurvePublicKey)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([])).issuer_name(self._cert.subject).public_key(public_key)
                   .serial_number(_serial()).not_valid_before(start).not_valid_after(end)
                   # RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                                  critical=True)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=True, data_encipherment=False, key_agreement=ec_key,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(self._eku, critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(self._aki, critical=False))
        return _pem(builder.sign(self._key, self._hash))

    @staticmethod
    def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        if len(data) > MAX_CSR_BYTES:
            raise CSRError(f"CSR is {len(data)} bytes, more than the {MAX_CSR_BYTES}-byte limit; send a plain CSR "
                           "for a P-256 key (about 400 bytes)")
        if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
            raise CSRError("request body is not a PEM CSR (expected -----BEGIN CERTIFICATE REQUEST-----)")
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise CSRError("CSR cannot be parsed (corrupt PEM or DER); the agent should generate a fresh one") from None
        try:
            public_key = csr.public_key()
        except (ValueError, TypeError):
            raise CSRError("CSR holds a public key of an unsupported type; use ECDSA P-256") from None
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            ok = public_key.curve.name in _ALLOWED_CURVES
        else:
            ok = isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048
        if not ok:
            raise CSRError(f"CSR key is {pki.describe_key(public_key)}, which is not accepted; use ECDSA P-256 "
                           "(recommended), P-384, or RSA with at least 2048 bits")
        if not csr.is_signature_valid:
            raise CSRError("CSR signature is invalid: the request was altered, or was not signed by the key it "
                           "carries; the agent should generate a fresh CSR")
        return csr


def validate_provided_ca(cert_pem: str | bytes, key_pem: str | bytes, now: float | None = None) -> list[str]:
    """Every reason a user-provided CA cannot be used, so one run of `dpagent cp` shows them all."""
    problems: list[str] = []
    cert: x509.Certificate | None = None
    key: pki.PrivateKey | None = None
    try:
        cert = pki.load_certs(cert_pem)[0]
    except pki.PkiError as exc:
        problems.append(f"CA certificate: {exc}")
    try:
        key = pki.load_private_key(key_pem)
    except pki.PkiError as exc:
        problems.append(f"CA key: {exc}")
    if cert is None:
        return problems
    if key is not None and not pki.public_keys_equal(key.public_key(), cert.public_key()):
        problems.append("CA key does not match the CA certificate (their public keys differ)")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            problems.append("certificate is not a CA: BasicConstraints has CA=false")
    except x509.ExtensionNotFound:
        problems.append("certificate is not a CA: it has no BasicConstraints extension with CA=true")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            problems.append("certificate KeyUsage lacks keyCertSign, so it may not sign certificates")
    except x509.ExtensionNotFound:
        problems.append("certificate has no KeyUsage extension; a CA needs keyCertSign")
    when = pki.utc(now)
    if when < cert.not_valid_before_utc:
        problems.append(f"certificate is not yet valid: it starts at "
                        f"{human_time(cert.not_valid_before_utc, now=when.timestamp())}; check the clock")
    if when > cert.not_valid_after_utc:
        problems.append(f"certificate expired at {human_time(cert.not_valid_after_utc, now=when.timestamp())}")
    return problems


def generate_cp_tls(hostnames: list[str], now: float | None = None,
                    existing_ca: tuple[str, str] | None = None) -> CpTls:
    """Self-made CA + server cert for the CP's HTTPS and gRPC; agents pin the CA with `--ca-cert-file`, so
    no public PKI is needed. The CA is separate from mesh CAs so it can be replaced without touching workloads.
    With `existing_ca` (cert PEM, key PEM) only the server cert is new, so agents keep trusting the CP when its
    hostnames change."""
    start = pki.utc(now) - dt.timedelta(seconds=BACKDATE)
    end = start + dt.timedelta(seconds=TEN_YEARS)
    if existing_ca:
        ca_cert = x509.load_pem_x509_certificate(existing_ca[0].encode())
        ca_key = pki.load_private_key(existing_ca[1])
        ca_name = ca_cert.subject
    else:
        ca_key = pki.generate_private_key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpagent"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "dpagent control plane CA")])
        ca_builder = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                      .public_key(ca_key.public_key()).serial_number(_serial())
                      .not_valid_before(start).not_valid_after(end))
        ca_cert = _ca_extensions(ca_builder, ca_key.public_key()).sign(ca_key, hashes.SHA256())

    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ipaddress.ip_address("127.0.0.1"),
                                                                ipaddress.ip_address("::1")]
    for host in [*hostnames, "localhost"]:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host.lower() not in dns:
                dns.append(host.lower())
        else:
            if ip not in ips:
                ips.append(ip)
    key = pki.generate_private_key()
    cn = dns[0] if dns else "localhost"
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(_serial())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(d) for d in dns),
                                                        *(x509.IPAddress(i) for i in ips)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return CpTls(ca_cert_pem=_pem(ca_cert), ca_key_pem=pki.private_key_to_pem(ca_key).decode(),
                 cert_pem=_pem(cert), key_pem=pki.private_key_to_pem(key).decode())
