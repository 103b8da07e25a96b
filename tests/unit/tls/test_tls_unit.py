"""The pure parts of TLS: certificate names and expiry, SNI lookup, renewal swaps, identities,
the listener edge (identity headers, HSTS) and the schema's TLS keys. No sockets."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from portcullis.config.schema import Listener, ListenerTls, Peer, Server, UpstreamTls
from portcullis.server.edge import build_edge
from portcullis.tls.certs import cert_info, client_identity, name_matches
from portcullis.tls.store import CertificateStore


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _write(ca: trustme.CA, tmp: Path, stem: str, *names: str, rsa: bool = False) -> dict[str, str]:
    leaf = ca.issue_cert(*names, key_type=trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA)
    cert, key = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return {"cert": str(cert), "key": str(key)}


def test_cert_info_names_expiry_and_key_type(ca: trustme.CA, tmp_path: Path) -> None:
    spec = _write(ca, tmp_path, "a", "A.Example.test", "*.wild.test", rsa=True)
    info = cert_info(Path(spec["cert"]).read_bytes())
    assert info.names == ("a.example.test", "*.wild.test")
    assert info.key_type == "RSA-2048"
    assert info.not_after > datetime.datetime.now(datetime.UTC)
    doc = info.as_dict()
    assert doc["expires_in_days"] > 1 and len(doc["sha256"]) == 64


def test_cert_info_falls_back_to_common_name(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    info = cert_info(cert.public_bytes(Encoding.PEM))
    assert info.names == ("legacy.test",) and info.key_type == "ECDSA-secp256r1"


def test_client_identity(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("alice.test", "alice@example.com", common_name="alice")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    ident = client_identity(der)
    assert "CN=alice" in ident.subject
    assert ident.sans == ("DNS:alice.test", "email:alice@example.com")
    assert ident.fingerprint == hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [("a.test", "a.test", True), ("*.a.test", "x.a.test", True), ("*.a.test", "a.test", False),
     ("*.a.test", "y.x.a.test", False), ("a.test", "b.test", False)],
)  # fmt: skip
def test_wildcards_cover_one_label(pattern: str, host: str, ok: bool) -> None:
    assert name_matches(pattern, host) is ok


def test_store_lookup_by_sni(ca: trustme.CA, tmp_path: Path) -> None:
    default = _write(ca, tmp_path, "d", "default.test")
    exact = _write(ca, tmp_path, "e", "a.test", "*.wild.test")
    other = _write(ca, tmp_path, "o", "a.test", "b.test")  # a.test: the first certificate naming it wins
    store = CertificateStore(ListenerTls.model_validate({"certificates": [default, exact, other]}), ["http/1.1"])
    ctx_default, ctx_exact, ctx_other = (e.context for e in store.entries)
    assert store.lookup(None) is ctx_default
    assert store.lookup("A.TEST.") is ctx_exact
    assert store.lookup("x.wild.test") is ctx_exact
    assert store.lookup("y.x.wild.test") is ctx_default
    assert store.lookup("b.test") is ctx_other
    assert store.lookup("unknown.test") is ctx_default
    assert store.context.sni_callback is not None
    assert store.context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_store_refresh_swaps_renewed_file_and_keeps_old_on_bad_file(ca: trustme.CA, tmp_path: Path) -> None:
    first = _write(ca, tmp_path, "one", "r.test")
    live = {"cert": str(tmp_path / "live.pem"), "key": str(tmp_path / "live.key")}
    shutil.copy(first["cert"], live["cert"])
    shutil.copy(first["key"], live["key"])
    store = CertificateStore(ListenerTls.model_validate({"certificates": [live]}), [])
    assert store.refresh() == []
    old_ctx = store.lookup("r.test")
    second = _write(ca, tmp_path, "two", "r.test", "www.r.test")
    shutil.copy(second["key"], live["key"])
    shutil.copy(second["cert"], live["cert"])
    os.utime(live["cert"], ns=(1, 1))
    assert store.refresh() == [live["cert"]]
    assert store.lookup("www.r.test") is not old_ctx
    assert store.entries[0].info.names == ("r.test", "www.r.test")
    Path(live["cert"]).write_text("not a certificate")
    assert store.refresh() == []
    assert store.entries[0].error is not None
    assert store.entries[0].info.names == ("r.test", "www.r.test")  # still serving the last good one


def test_edge_identity_headers_and_hsts(ca: trustme.CA, tmp_path: Path) -> None:
    spec = _write(ca, tmp_path, "s", "a.test")
    listener = Listener.model_validate({
        "name": "s", "listen": "127.0.0.1:8443",
        "tls": {"certificates": [spec], "hsts": {"max_age": "1h", "preload": True},
                "client_auth": {"ca": spec["cert"], "forward_headers": {"subject": "X-Subj", "fingerprint": "X-Fp"}}},
    })  # fmt: skip
    edge = build_edge(listener, Server(), None)
    assert edge.hsts == b"max-age=3600; preload"
    assert edge.strip == frozenset({b"x-subj", b"x-fp"})
    leaf = ca.issue_cert("c.test", common_name="c\r\nX-Evil: 1")
    ident = client_identity(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER))
    out = edge.with_identity([(b"X-Subj", b"forged"), (b"Accept", b"*/*"), (b"x-fp", b"00")], ident)
    assert out[0] == (b"Accept", b"*/*")
    assert out[1][0] == b"X-Subj" and b"\r" not in out[1][1] and b"\n" not in out[1][1]
    assert out[2] == (b"X-Fp", ident.fingerprint.encode())
    assert edge.with_identity([(b"x-subj", b"forged")], None) == []


def test_schema_tls_keys() -> None:
    with pytest.raises(ValidationError):
        Listener.model_validate({"name": "x", "listen": "127.0.0.1:1", "redirect_https": True,
                                 "tls": {"certificates": [{"cert": "c", "key": "k"}]}})  # fmt: skip
    assert Listener.model_validate({"name": "x", "listen": "127.0.0.1:1", "h2c": True}).h2c
    assert Peer.model_validate({"url": "https://api.test"}).url == "https://api.test"
    with pytest.raises(ValidationError):
        Peer.model_validate({"url": "ftp://api.test"})
    with pytest.raises(ValidationError):
        UpstreamTls.model_validate({"cert": "c.pem"})
    acme = {"directory": "https://ca.test/dir", "domains": ["A.test"]}
    assert ListenerTls.model_validate({"acme": acme}).acme.domains == ["a.test"]  # type: ignore[union-attr]
    with pytest.raises(ValidationError):
        ListenerTls.model_validate({"certificates": []})
    with pytest.raises(ValidationError):
        ListenerTls.model_validate({})
