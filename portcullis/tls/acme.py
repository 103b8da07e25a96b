"""ACME (RFC 8555) certificates, obtained and renewed by the master with the `acme` package.

Per listener with `tls.acme`, files live in `<storage>/<listener>/`: `cert.pem` (the full chain)
and `key.pem`, plus the account key in `<storage>/account.key`. Before the workers start, a
listener without a certificate yet gets a short-lived self-signed placeholder so it can serve at
once; then a background task orders the real one (HTTP-01: the key authorizations are written to
`<storage>/challenges/<token>`, which every plain listener serves at
`/.well-known/acme-challenge/<token>`), writes it atomically, and renews it `renew_before` ahead
of expiry, with backoff after failures. The workers' certificate watch serves the new files.
The ACME calls are blocking (requests), so they run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from portcullis.observability.events import event

if TYPE_CHECKING:
    from portcullis.config.schema import Acme, Certificate, Config, ListenerTls

log = logging.getLogger("portcullis")

PLACEHOLDER_ORG = "Portcullis ACME placeholder"
TOKEN = re.compile(rb"^[A-Za-z0-9_-]{1,128}$")


def acme_files(storage: str, listener: str) -> tuple[str, str]:
    base = os.path.join(storage, listener)
    return os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")


def listener_certificates(name: str, tls: ListenerTls) -> list[Certificate]:
    """The certificates a TLS listener serves: the configured ones, then the ACME one."""
    from portcullis.config.schema import Certificate

    certs = list(tls.certificates)
    if tls.acme is not None:
        cert, key = acme_files(tls.acme.storage, name)
        certs.append(Certificate(cert=cert, key=key))
    return certs


def challenge_dirs(config: Config) -> tuple[str, ...]:
    dirs = {
        os.path.abspath(os.path.join(lst.tls.acme.storage, "challenges"))
        for lst in config.listeners
        if lst.tls is not None and lst.tls.acme is not None
    }
    return tuple(sorted(dirs))


def read_challenge(dirs: tuple[str, ...], token: bytes) -> bytes | None:
    """The key authorization for an HTTP-01 token, if one of ours is pending."""
    if not TOKEN.match(token):
        return None
    for directory in dirs:
        try:
            with open(os.path.join(directory, token.decode("ascii")), "rb") as fh:
                return fh.read()
        except OSError:
            continue
    return None


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def write_placeholder(cert_path: str, key_path: str, domains: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORG)])  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    os.makedirs(os.path.dirname(cert_path), exist_ok=True)
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def needs_issuing(cert_path: str, acme: Acme, now: datetime.datetime) -> bool:
    """No certificate, a placeholder, other names, or expiring within `renew_before`."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return True
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if any(o.value == PLACEHOLDER_ORG for o in orgs):
        return True
    try:
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.DNSName))  # fmt: skip
    except x509.ExtensionNotFound:
        names = set()
    if names != set(acme.domains):
        return True
    return (cert.not_valid_after_utc - now).total_seconds() < acme.renew_before


def issue(acme_cfg: Acme, listener: str) -> None:
    """Order a certificate for the listener's domains (blocking; run in a thread)."""
    from acme import challenges, client, crypto_util, errors, messages

    storage = acme_cfg.storage
    os.makedirs(os.path.join(storage, "challenges"), exist_ok=True)
    account_path = os.path.join(storage, "account.key")
    if os.path.exists(account_path):
        loaded = serialization.load_pem_private_key(Path(account_path).read_bytes(), None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        account_key = loaded
    else:
        account_key = rsa.generate_private_key(65537, 2048)
        _write_atomic(account_path, _key_pem(account_key), 0o600)
    from josepy.jwk import JWKRSA

    jwk = JWKRSA(key=account_key)
    verify: bool | str = acme_cfg.ca_bundle or True
    net = client.ClientNetwork(jwk, user_agent="portcullis", verify_ssl=verify)  # type: ignore[arg-type]
    directory = client.ClientV2.get_directory(acme_cfg.directory, net)
    acme = client.ClientV2(directory, net)
    registration = messages.NewRegistration.from_data(email=acme_cfg.email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:  # this key has an account already
        acme.query_registration(messages.RegistrationResource(uri=exc.location, body=messages.Registration()))
    cert_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = _key_pem(cert_key)
    order = acme.new_order(crypto_util.make_csr(key_pem, list(acme_cfg.domains)))
    written = []
    try:
        for authz in order.authorizations:
            for challb in authz.body.challenges:
                if isinstance(challb.chall, challenges.HTTP01):
                    response, validation = challb.response_and_validation(jwk)
                    path = os.path.join(storage, "challenges", challb.chall.encode("token"))
                    _write_atomic(path, validation.encode())
                    written.append(path)
                    acme.answer_challenge(challb, response)
                    break
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=120)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
    cert_path, key_path = acme_files(storage, listener)
    os.makedirs(os.path.dirname(cert_path), exist_ok=True)
    # key first: a watcher that sees the new key with the old certificate retries at its next look
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, order.fullchain_pem.encode())


class AcmeManager:
    """Runs in the master: placeholders before the workers start, then issuance and renewal."""

    def __init__(self, config: Config) -> None:
        self.jobs = [
            (lst.name, lst.tls.acme) for lst in config.listeners if lst.tls is not None and lst.tls.acme is not None
        ]
        self._task: asyncio.Task[None] | None = None
        self.status: dict[str, dict[str, object]] = {}

    def prepare(self) -> None:
        for name, acme in self.jobs:
            cert, key = acme_files(acme.storage, name)
            if not (os.path.exists(cert) and os.path.exists(key)):
                write_placeholder(cert, key, list(acme.domains))

    def start(self) -> None:
        if self.jobs:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        backoff = {name: 0.0 for name, _ in self.jobs}
        while True:
            next_check = min(acme.check_interval for _, acme in self.jobs)
            for name, acme in self.jobs:
                cert, _ = acme_files(acme.storage, name)
                if not needs_issuing(cert, acme, datetime.datetime.now(datetime.UTC)):
                    continue
                try:
                    await asyncio.to_thread(issue, acme, name)
                except Exception as exc:  # network, the CA refusing, a challenge failing
                    backoff[name] = min(max(backoff[name] * 2, acme.retry_after), 3600.0)
                    next_check = min(next_check, backoff[name])
                    self.status[name] = {"ok": False, "error": str(exc) or type(exc).__name__}
                    event(log, "acme_failed", f"ACME certificate for {name} not obtained; retrying",
                          level=logging.WARNING, listener=name, error=str(exc), retry_in=backoff[name])  # fmt: skip
                    continue
                backoff[name] = 0.0
                self.status[name] = {"ok": True, "issued_at": datetime.datetime.now(datetime.UTC).isoformat()}
                event(log, "acme_issued", f"ACME certificate for {name} obtained", listener=name,
                      domains=list(acme.domains))  # fmt: skip
            await asyncio.sleep(next_check)
