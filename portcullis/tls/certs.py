"""Reading certificates with `cryptography`: the names a certificate serves, its expiry, and the
identity of a verified client certificate. Pure functions of the bytes, no sockets."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the store and the admin API need to know about a served certificate."""

    names: tuple[str, ...]
    """DNS names from the SAN entries (lower case; `*.example.com` for wildcards)."""
    subject: str
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint: str
    key_type: str
    chain_length: int

    def as_dict(self, now: datetime.datetime | None = None) -> dict[str, object]:
        now = now or datetime.datetime.now(datetime.UTC)
        return {
            "names": list(self.names), "subject": self.subject, "issuer": self.issuer,
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
            "expires_in_days": round((self.not_after - now).total_seconds() / 86400, 2),
            "sha256": self.fingerprint, "key_type": self.key_type, "chain_length": self.chain_length,
        }  # fmt: skip


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:  # legacy certificates: the common name
        names = [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(dict.fromkeys(names))


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA-{key.curve.name}"
    return type(key).__name__


def cert_info(pem: bytes) -> CertInfo:
    """Describe the leaf (first) certificate of a PEM chain."""
    chain = x509.load_pem_x509_certificates(pem)
    leaf = chain[0]
    return CertInfo(
        names=_dns_names(leaf),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type=_key_type(leaf),
        chain_length=len(chain),
    )


def read_cert_info(path: str) -> CertInfo:
    with open(path, "rb") as fh:
        return cert_info(fh.read())


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A verified client certificate, as the authorization filters and the upstream see it."""

    subject: str
    sans: tuple[str, ...]
    fingerprint: str
    """SHA-256 of the DER certificate, lower-case hex."""
    issuer: str
    serial: str


def client_identity(der: bytes) -> ClientIdentity:
    cert = x509.load_der_x509_certificate(der)
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans += [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
        sans += [f"email:{n}" for n in ext.get_values_for_type(x509.RFC822Name)]
        sans += [f"URI:{n}" for n in ext.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"IP:{n}" for n in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return ClientIdentity(
        subject=cert.subject.rfc4514_string(),
        sans=tuple(sans),
        fingerprint=hashlib.sha256(der).hexdigest(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
    )


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125: a wildcard covers exactly one left-most label."""
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == host
