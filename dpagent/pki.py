"""Key, CSR and certificate helpers shared by the agent and the control plane.

Kept free of network stacks (no aiohttp, no grpc) so the agent can import it without paying their memory cost.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from dpagent.errors import ConfigError
from dpagent.fsutil import write_atomic as write_atomic  # re-exported for callers that already use pki
from dpagent.fsutil import write_private
from dpagent.timefmt import human_time

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KEY_TYPES = ("ecdsa-p256", "rsa")


class PkiError(ConfigError):
    """A key, certificate or chain is unusable; the message says which file/field and why."""


def utc(ts: float | None = None) -> dt.datetime:
    """Seconds since the epoch as an aware UTC datetime; every clock in the project is injectable as a float."""
    return dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC)


def generate_private_key(key_type: str = "ecdsa-p256") -> PrivateKey:
    """P-256 by default: 0.02 ms to generate against ~50 ms for RSA-2048, and every TLS stack we meet accepts it."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; use one of: {', '.join(KEY_TYPES)}")


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8, because Envoy's file SDS cannot prompt for a passphrase; file mode is the protection."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(pem: str | bytes) -> PrivateKey:
    """Parse a PEM key; the error never echoes the input, since the input is a secret."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted; provide an unencrypted key" if "encrypted" in str(exc).lower() else \
            "it is not a PEM private key (expected -----BEGIN PRIVATE KEY----- or similar)"
        raise PkiError(f"cannot load the private key: {reason}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported private key type {describe_key(key.public_key())}; use ECDSA or RSA")
    return key


def describe_key(public_key: object) -> str:
    """Human name of a public key ("ECDSA P-256", "RSA-1024") for error messages that must say what was found."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def build_csr(key: PrivateKey, *, uri_sans: list[str] | None = None) -> str:
    """A CSR only proves possession of the key: the CP ignores subject and SANs and picks the identity itself.

    URI SANs may still be passed as a hint for humans reading the request.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri_sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uri_sans]), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def write_private_key(path: str | os.PathLike[str], key: PrivateKey | str | bytes) -> None:
    """Private keys are 0600 from creation; the key material never leaves this host."""
    data = private_key_to_pem(key) if not isinstance(key, str | bytes) else (
        key.encode() if isinstance(key, str) else key)
    write_private(path, data)


@dataclass(frozen=True)
class CertInfo:
    """The few fields the agent logs, renews on, and shows in `doctor`; no key material."""

    serial_hex: str
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    is_ca: bool

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    def renew_at(self, fraction: float = 0.8) -> dt.datetime:
        """Renewal point at `fraction` of the lifetime (Kuma renews at 4/5)."""
        return self.not_before + (self.not_after - self.not_before) * fraction


def load_certs(pem: str | bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, in order; an empty or non-PEM input is an error naming the problem."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PkiError("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"cannot parse the PEM certificate: {exc}") from None


def cert_info(cert: x509.Certificate | str | bytes) -> CertInfo:
    """Summary of the first certificate when given PEM (a chain file starts with its leaf)."""
    c = cert if isinstance(cert, x509.Certificate) else load_certs(cert)[0]
    try:
        san = c.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = (), ()
    return CertInfo(serial_hex=f"{c.serial_number:x}", subject=c.subject.rfc4514_string(),
                    issuer=c.issuer.rfc4514_string(), not_before=c.not_valid_before_utc,
                    not_after=c.not_valid_after_utc, uri_sans=uris, dns_sans=dns, is_ca=_is_ca(c))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def public_keys_equal(a: Any, b: Any) -> bool:
    """Compare keys by their SubjectPublicKeyInfo bytes, which works across key types."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(a.public_bytes(*fmt) == b.public_bytes(*fmt))


def _validity_problem(cert: x509.Certificate, when: dt.datetime, role: str) -> str | None:
    info = cert_info(cert)
    if when < cert.not_valid_before_utc:
        return (f"{role} ({info.subject or 'serial ' + info.serial_hex}) is not valid until "
                f"{human_time(cert.not_valid_before_utc, now=when.timestamp())}; check this host's clock")
    if when > cert.not_valid_after_utc:
        return (f"{role} ({info.subject or 'serial ' + info.serial_hex}) expired at "
                f"{human_time(cert.not_valid_after_utc, now=when.timestamp())}")
    return None


def verify_chain(chain_pem: str | bytes, bundle_pem: str | bytes, *, now: float | None = None) -> x509.Certificate:
    """Check that the leaf (first cert of `chain_pem`, then optional intermediates) chains to a root in the bundle.

    Done by hand rather than with a TLS-profile verifier because SPIFFE leaves have no DNS name and the agent needs
    to check its own cert before swapping it in, whatever its EKUs. Returns the trust anchor that matched.
    """
    chain = load_certs(chain_pem)
    anchors = load_certs(bundle_pem)
    when = utc(now)
    problem = _validity_problem(chain[0], when, "the certificate")
    if problem:
        raise PkiError(problem)
    current = chain[0]
    pool = list(chain[1:])
    for _depth in range(len(pool) + 2):
        for anchor in anchors:
            if _issued_by(current, anchor):
                problem = _validity_problem(anchor, when, "the trusted CA")
                if problem:
                    raise PkiError(problem)
                return anchor
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            break
        if not _is_ca(parent):
            raise PkiError(f"intermediate {parent.subject.rfc4514_string()} is not a CA (BasicConstraints)")
        problem = _validity_problem(parent, when, "an intermediate CA")
        if problem:
            raise PkiError(problem)
        pool.remove(parent)
        current = parent
    roots = ", ".join(sorted({a.subject.rfc4514_string() for a in anchors})) or "none"
    raise PkiError(f"the certificate issued by {current.issuer.rfc4514_string()!r} does not chain to any CA in the "
                   f"trust bundle (bundle holds: {roots}); the CA may have been rotated, fetch the current bundle")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject or not _is_ca(issuer):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
