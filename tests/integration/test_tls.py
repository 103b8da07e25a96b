"""Downstream TLS: SNI certificates, protocol versions, mTLS identities, renewal on disk, HSTS, redirect."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import Upstream, free_port, wait_until
from tls_support import ListenerProxy, Pki, https_get, tls_connect


def _names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ListenerProxy]]:
    procs: list[ListenerProxy] = []
    workdir = tmp_path_factory.mktemp("tls-proxies")

    def start(config: dict[str, Any], listeners: list[dict[str, Any]]) -> ListenerProxy:
        proxy = ListenerProxy(config, listeners, workdir, f"p{len(procs)}")
        procs.append(proxy)
        return proxy

    yield start
    for proxy in procs:
        proxy.stop()


def _config(up: Upstream, admin_port: int | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "workers": 1,
        "upstreams": {"main": {"peers": [{"url": up.url}]}},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "main"}],
    }
    if admin_port:
        cfg["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
    return cfg


@pytest.fixture(scope="module")
def sni_proxy(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> tuple[ListenerProxy, int]:
    default = pki.server_cert("default.test")
    rsa = pki.server_cert("rsa.test", "*.rsa-wild.test", rsa=True)
    ec = pki.server_cert("a.test", "*.wild.test")
    admin = free_port()
    tls = {"certificates": [default, rsa, ec], "hsts": {"max_age": "1h", "include_subdomains": True}}
    proxy = started(_config(upstream, admin), [{"name": "secure", "tls": tls}])
    return proxy, admin


def test_certificate_chosen_by_sni(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = sni_proxy
    port = proxy.port("secure")
    ctx = pki.client_context()
    for sni, expected in [
        ("a.test", "a.test"), ("x.wild.test", "*.wild.test"), ("rsa.test", "rsa.test"),
        ("deep.x.rsa-wild.test", "default.test"), ("y.rsa-wild.test", "*.rsa-wild.test"),
    ]:  # fmt: skip
        check = ssl.create_default_context()
        pki.ca.configure_trust(check)
        check.check_hostname = False
        status, _, body, der = https_get(port, check, sni, host=sni)
        assert status == 200
        assert expected in _names(der), (sni, _names(der))
        assert json.loads(body)["headers"]
    # a proper verifying client accepts the chosen certificate
    assert https_get(port, ctx, "x.wild.test")[0] == 200


def test_default_certificate_without_sni(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = sni_proxy
    ctx = ssl.create_default_context()
    pki.ca.configure_trust(ctx)
    ctx.check_hostname = False
    status, _, _, der = https_get(proxy.port("secure"), ctx, None)
    assert status == 200
    assert _names(der) == ["default.test"]


def test_ecdsa_and_rsa_and_chain(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = sni_proxy
    ctx = pki.client_context()
    with tls_connect(proxy.port("secure"), ctx, "rsa.test") as sock:
        cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    with tls_connect(proxy.port("secure"), ctx, "a.test") as sock:
        cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_tls12_works_and_tls11_refused(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = sni_proxy
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(proxy.port("secure"), ctx, "a.test") as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.cipher()[0].startswith("ECDHE-")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_connect(proxy.port("secure"), old, "a.test").close()


def test_weak_tls12_cipher_refused(sni_proxy: tuple[ListenerProxy, int]) -> None:
    proxy, _ = sni_proxy
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.check_hostname = False
    weak.verify_mode = ssl.CERT_NONE
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_connect(proxy.port("secure"), weak, "a.test").close()


def test_hsts_on_tls_responses(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = sni_proxy
    _, headers, _, _ = https_get(proxy.port("secure"), pki.client_context(), "a.test")
    assert headers["strict-transport-security"] == "max-age=3600; includeSubDomains"


def test_admin_shows_certificates_and_expiry(sni_proxy: tuple[ListenerProxy, int]) -> None:
    _, admin = sni_proxy
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/listeners", timeout=5) as resp:
        doc = json.loads(resp.read())
    certs = doc[0]["certificates"]
    assert [c["names"] for c in certs] == [["default.test"], ["rsa.test", "*.rsa-wild.test"], ["a.test", "*.wild.test"]]
    assert all(c["expires_in_days"] > 1 and c["not_after"] for c in certs)
    assert certs[1]["key_type"].startswith("RSA") and certs[2]["key_type"].startswith("ECDSA")
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    expiry = [line for line in metrics.splitlines() if line.startswith("portcullis_certificate_not_after_seconds{")]
    assert len(expiry) == 3 and 'names="a.test,*.wild.test"' in expiry[2]
    assert float(expiry[0].rsplit(" ", 1)[1]) > time.time()


# --------------------------------------------------------------------------- mTLS

@pytest.fixture(scope="module")
def mtls_proxy(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> ListenerProxy:
    server = pki.server_cert("a.test")
    forward = {"subject": "X-Client-Subject", "fingerprint": "X-Client-Fingerprint", "sans": "X-Client-Sans"}
    ca = str(pki.ca_path)
    listeners = [
        {"name": "required",
         "tls": {"certificates": [server], "client_auth": {"ca": ca, "required": True, "forward_headers": forward}}},
        {"name": "optional",
         "tls": {"certificates": [server], "client_auth": {"ca": ca, "required": False, "forward_headers": forward}}},
    ]  # fmt: skip
    return started(_config(upstream), listeners)


def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """A TLS 1.3 server refuses a missing client certificate after the client's handshake ends:
    the refusal shows on the first read."""
    try:
        status, *_ = https_get(port, ctx, "a.test")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except (IndexError, ValueError):
        return True  # closed without an answer
    return status >= 400 and False


def test_mtls_required_refuses_without_client_certificate(mtls_proxy: ListenerProxy, pki: Pki) -> None:
    assert _refused(mtls_proxy.port("required"), pki.client_context())


def test_mtls_required_refuses_foreign_ca(mtls_proxy: ListenerProxy, pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path)
    ctx = pki.client_context(other.client_cert("mallory@example.com"))
    assert _refused(mtls_proxy.port("required"), ctx)


def test_mtls_identity_forwarded(mtls_proxy: ListenerProxy, pki: Pki) -> None:
    leaf = pki.client_cert("alice.clients.test")
    ctx = pki.client_context(leaf)
    forged = {"X-Client-Subject": "CN=admin", "X-Client-Fingerprint": "00"}
    status, _, body, _ = https_get(mtls_proxy.port("required"), ctx, "a.test", headers=forged)
    assert status == 200
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
    )
    assert seen["x-client-fingerprint"] == [hashlib.sha256(der).hexdigest()]
    assert len(seen["x-client-subject"]) == 1 and "CN=alice.clients.test" in seen["x-client-subject"][0]
    assert seen["x-client-sans"] == ["DNS:alice.clients.test"]


def test_mtls_optional_strips_forged_identity(mtls_proxy: ListenerProxy, pki: Pki) -> None:
    forged = {"X-Client-Subject": "CN=admin", "X-Client-Fingerprint": "00"}
    status, _, body, _ = https_get(mtls_proxy.port("optional"), pki.client_context(), "a.test", headers=forged)
    assert status == 200
    names = {name.lower() for name, _ in json.loads(body)["headers"]}
    assert "x-client-subject" not in names and "x-client-fingerprint" not in names


# --------------------------------------------------------------------------- renewal on disk

def test_certificate_replaced_on_disk_is_served_without_restart(
    pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy], tmp_path: Path
) -> None:
    first = pki.server_cert("renew.test")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(first["cert"], cert)
    shutil.copy(first["key"], key)
    tls = {"certificates": [{"cert": str(cert), "key": str(key)}], "watch_interval": "200ms"}
    proxy = started(_config(upstream), [{"name": "s", "tls": tls}])
    ctx = pki.client_context()
    port = proxy.port("s")
    old = tls_connect(port, ctx, "renew.test")  # an established connection survives the renewal
    before = old.getpeercert(binary_form=True)
    second = pki.server_cert("renew.test", "www.renew.test")
    # write the renewal as a certificate manager does: new files renamed into place
    shutil.copy(second["cert"], tmp_path / "new.pem")
    shutil.copy(second["key"], tmp_path / "new.key")
    os.replace(tmp_path / "new.key", key)
    os.replace(tmp_path / "new.pem", cert)

    def served_new() -> bool:
        with tls_connect(port, ctx, "renew.test") as sock:
            return sock.getpeercert(binary_form=True) != before

    assert wait_until(served_new, 10.0, 0.1)
    with tls_connect(port, ctx, "renew.test") as sock:
        assert "www.renew.test" in _names(sock.getpeercert(binary_form=True) or b"")
    old.sendall(b"GET /echo HTTP/1.1\r\nHost: renew.test\r\nConnection: close\r\n\r\n")
    assert old.recv(12) == b"HTTP/1.1 200"
    old.close()


# --------------------------------------------------------------------------- plain listener extras

def test_redirect_https(upstream: Upstream, started: Callable[..., ListenerProxy]) -> None:
    proxy = started(_config(upstream), [{"name": "plain", "redirect_https": True, "https_port": 8443}])
    with socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=5) as s:
        s.sendall(b"GET /a/b?x=1 HTTP/1.1\r\nHost: shop.test:8080\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 308 ")
    assert b"\r\nLocation: https://shop.test:8443/a/b?x=1\r\n" in data


def test_session_resumption(sni_proxy: tuple[ListenerProxy, int], pki: Pki) -> None:
    """A client resumes its session (a ticket) instead of a full handshake, on every certificate."""
    proxy, _ = sni_proxy
    ctx = pki.client_context()
    for sni in ("a.test", "rsa.test"):
        first = tls_connect(proxy.port("secure"), ctx, sni)
        first.sendall(f"GET /echo HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
        assert first.recv(12) == b"HTTP/1.1 200"  # TLS 1.3 tickets arrive after the handshake
        session = first.session
        first.close()
        raw = socket.create_connection(("127.0.0.1", proxy.port("secure")), timeout=5)
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as again:
            assert again.session_reused
