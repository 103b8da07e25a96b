"""ACME end to end: Debian's pebble (with pebble-challtestsrv answering its DNS) issues a
certificate to a TLS listener; the HTTP-01 challenge is answered by the proxy's plain listener."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from harness import Upstream, _stop_process, free_port
from tls_support import ListenerProxy, tls_connect

pytestmark = pytest.mark.skipif(
    shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None,
    reason="Debian's pebble is not installed (apt-get install pebble)",
)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    work = tmp_path_factory.mktemp("pebble")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    (work / "pebble.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (work / "pebble.key").write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(work / "pebble-ca.pem"))
    dns, dns_mgmt, api, mgmt, http_port = free_port(), free_port(), free_port(), free_port(), free_port()
    (work / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{api}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(work / "pebble.pem"), "privateKey": str(work / "pebble.key"),
        "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}))  # fmt: skip
    logs = open(work / "pebble.log", "wb")  # noqa: SIM115
    challtest = subprocess.Popen(
        ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-management", f"127.0.0.1:{dns_mgmt}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
        stdout=logs, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        ["pebble", "-config", str(work / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
        stdout=logs, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        _wait_port(api)
        yield {"directory": f"https://127.0.0.1:{api}/dir", "ca": str(work / "pebble-ca.pem"), "mgmt": mgmt,
               "http_port": http_port, "work": work}  # fmt: skip
    finally:
        _stop_process(server)
        _stop_process(challtest)
        logs.close()


def test_certificate_issued_by_pebble_via_http01(pebble: dict[str, object], upstream: Upstream,
                                                 tmp_path: Path) -> None:  # fmt: skip
    storage = tmp_path / "acme"
    acme = {"directory": pebble["directory"], "email": "ops@acme.test", "domains": ["acme.test", "www.acme.test"],
            "storage": str(storage), "ca_bundle": pebble["ca"], "retry_after": "1s"}  # fmt: skip
    config = {"workers": 1, "upstreams": {"main": {"peers": [{"url": upstream.url}]}},
              "routes": [{"name": "all", "upstream": "main"}]}  # fmt: skip
    listeners = [
        {"name": "web", "listen": f"127.0.0.1:{pebble['http_port']}", "redirect_https": True},
        {"name": "secure", "tls": {"acme": acme, "watch_interval": "200ms"}},
    ]
    proxy = ListenerProxy(config, listeners, tmp_path, "acme-proxy")
    try:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def issuer() -> str:
            with tls_connect(proxy.port("secure"), insecure, "acme.test") as sock:
                cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
                return cert.issuer.rfc4514_string()

        first = issuer()  # the placeholder serves until the real certificate is there
        assert "Portcullis ACME placeholder" in first
        end = time.monotonic() + 60
        while "Pebble" not in issuer() and time.monotonic() < end:
            time.sleep(0.3)
        assert "Pebble" in issuer(), proxy.log_path.read_text()[-3000:]
        # it verifies against pebble's root, for both names
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(pebble["ca"]))
        with urllib.request.urlopen(f"https://127.0.0.1:{pebble['mgmt']}/roots/0", context=ctx, timeout=5) as resp:
            root = resp.read().decode()
        verify = ssl.create_default_context(cadata=root)
        for name in ("acme.test", "www.acme.test"):
            with tls_connect(proxy.port("secure"), verify, name) as sock:
                sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                assert sock.recv(12) == b"HTTP/1.1 200"
        assert (storage / "account.key").exists() and (storage / "secure" / "cert.pem").exists()
        assert not list((storage / "challenges").iterdir())  # answered challenges are removed
    finally:
        proxy.stop()
