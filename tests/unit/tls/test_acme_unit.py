"""ACME helpers without a CA: placeholders, when to (re)issue, challenge lookup, file layout."""

from __future__ import annotations

import datetime
from pathlib import Path

import trustme

from portcullis.config.schema import Acme, ListenerTls
from portcullis.tls.acme import acme_files, listener_certificates, needs_issuing, read_challenge, write_placeholder
from portcullis.tls.store import CertificateStore

NOW = datetime.datetime.now(datetime.UTC)


def _acme(tmp: Path, **extra: object) -> Acme:
    return Acme.model_validate({"directory": "https://ca.test/dir", "domains": ["a.test", "www.a.test"],
                                "storage": str(tmp), **extra})  # fmt: skip


def test_placeholder_serves_and_is_replaced(tmp_path: Path) -> None:
    acme = _acme(tmp_path)
    cert, key = acme_files(acme.storage, "secure")
    assert needs_issuing(cert, acme, NOW)  # nothing yet
    write_placeholder(cert, key, list(acme.domains))
    assert needs_issuing(cert, acme, NOW)  # a placeholder is not the real thing
    tls = ListenerTls.model_validate({"acme": acme.model_dump()})
    store = CertificateStore(tls, [], listener_certificates("secure", tls))
    assert store.entries[0].info.names == ("a.test", "www.a.test")


def test_real_certificate_renewed_only_when_close_to_expiry(tmp_path: Path) -> None:
    acme = _acme(tmp_path, renew_before="240h")
    cert, _ = acme_files(acme.storage, "secure")
    Path(cert).parent.mkdir(parents=True)
    ca = trustme.CA()
    long = ca.issue_cert("a.test", "www.a.test", not_after=NOW + datetime.timedelta(days=60))
    Path(cert).write_bytes(long.cert_chain_pems[0].bytes())
    assert not needs_issuing(cert, acme, NOW)
    short = ca.issue_cert("a.test", "www.a.test", not_after=NOW + datetime.timedelta(days=5))
    Path(cert).write_bytes(short.cert_chain_pems[0].bytes())
    assert needs_issuing(cert, acme, NOW)
    other = ca.issue_cert("a.test", not_after=NOW + datetime.timedelta(days=60))  # the domains changed
    Path(cert).write_bytes(other.cert_chain_pems[0].bytes())
    assert needs_issuing(cert, acme, NOW)


def test_challenge_lookup(tmp_path: Path) -> None:
    (tmp_path / "tok-EN_1").write_bytes(b"tok-EN_1.thumbprint")
    dirs = (str(tmp_path / "missing"), str(tmp_path))
    assert read_challenge(dirs, b"tok-EN_1") == b"tok-EN_1.thumbprint"
    assert read_challenge(dirs, b"unknown") is None
    assert read_challenge(dirs, b"../../etc/passwd") is None
    assert read_challenge(dirs, b"") is None
