"""TLS to upstreams: https:// peers verified by default, a configured CA and server name,
a client certificate for mTLS to the peer, and kept-alive connections reused."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tls_support import ListenerProxy, Pki


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def do_GET(self) -> None:
        sslsock = self.connection
        peer = sslsock.getpeercert() if isinstance(sslsock, ssl.SSLSocket) else None
        subject = dict(x[0] for x in peer["subject"]) if peer else None
        doc = {"path": self.path, "client_cn": subject.get("commonName") if subject else None,
               "sni": self.server.last_sni, "connections": self.server.connections}  # fmt: skip
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ctx = ctx
        self.connections = 0
        self.last_sni: str | None = None

        def on_sni(sock: Any, name: str | None, _: Any) -> None:
            self.last_sni = name

        ctx.sni_callback = on_sni

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        self.connections += 1
        return self.ctx.wrap_socket(sock, server_side=True), addr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-up"))


def _serve(pki: Pki, client_ca: bool) -> Iterator[_TlsServer]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.ca.issue_cert("upstream.test", common_name="upstream.test").configure_cert(ctx)
    if client_ca:
        pki.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    server = _TlsServer(ctx)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def https_upstream(pki: Pki) -> Iterator[_TlsServer]:
    yield from _serve(pki, client_ca=False)


@pytest.fixture(scope="module")
def mtls_upstream(pki: Pki) -> Iterator[_TlsServer]:
    yield from _serve(pki, client_ca=True)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ListenerProxy]]:
    procs: list[ListenerProxy] = []
    workdir = tmp_path_factory.mktemp("up-proxies")

    def start(upstreams: dict[str, Any]) -> ListenerProxy:
        routes = [{"name": n, "match": {"path_prefix": f"/{n}/"}, "upstream": n} for n in upstreams]
        cfg = {"workers": 1, "upstreams": upstreams, "routes": routes}
        proxy = ListenerProxy(cfg, [{"name": "web"}], workdir, f"up{len(procs)}")
        procs.append(proxy)
        return proxy

    yield start
    for proxy in procs:
        proxy.stop()


def _get(proxy: ListenerProxy, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port('web')}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, None


@pytest.fixture(scope="module")
def proxy(
    pki: Pki, https_upstream: _TlsServer, mtls_upstream: _TlsServer, started: Callable[..., ListenerProxy]
) -> ListenerProxy:
    url = f"https://127.0.0.1:{https_upstream.server_address[1]}"
    murl = f"https://127.0.0.1:{mtls_upstream.server_address[1]}"
    client = pki.ca.issue_cert("proxy.clients.test", common_name="proxy.clients.test")
    cert, key = pki.dir / "proxy-client.pem", pki.dir / "proxy-client.key"
    cert.write_bytes(client.cert_chain_pems[0].bytes())
    key.write_bytes(client.private_key_pem.bytes())
    ca = str(pki.ca_path)
    return started({
        "good": {"peers": [{"url": url}], "tls": {"ca": ca, "server_name": "upstream.test"}},
        "system": {"peers": [{"url": url}], "tls": {"server_name": "upstream.test"}},
        "wrongname": {"peers": [{"url": url}], "tls": {"ca": ca}},
        "noverify": {"peers": [{"url": url}], "tls": {"verify": False}},
        "mtls": {"peers": [{"url": murl}], "tls": {"ca": ca, "server_name": "upstream.test",
                                                  "cert": str(cert), "key": str(key)}},
        "nocert": {"peers": [{"url": murl}], "tls": {"ca": ca, "server_name": "upstream.test"}},
    })  # fmt: skip


def test_https_peer_verified_with_configured_ca_and_name(proxy: ListenerProxy) -> None:
    status, doc = _get(proxy, "/good/x")
    assert status == 200 and doc["path"] == "/good/x"
    assert doc["sni"] == "upstream.test"


def test_unknown_ca_refused_by_default(proxy: ListenerProxy) -> None:
    assert _get(proxy, "/system/x")[0] == 502


def test_name_mismatch_refused(proxy: ListenerProxy) -> None:
    assert _get(proxy, "/wrongname/x")[0] == 502


def test_verify_false_accepts(proxy: ListenerProxy) -> None:
    assert _get(proxy, "/noverify/x")[0] == 200


def test_client_certificate_to_upstream(proxy: ListenerProxy) -> None:
    status, doc = _get(proxy, "/mtls/x")
    assert status == 200 and doc["client_cn"] == "proxy.clients.test"
    assert _get(proxy, "/nocert/x")[0] == 502


def test_tls_connections_reused(proxy: ListenerProxy, https_upstream: _TlsServer) -> None:
    _get(proxy, "/good/warm")
    before = https_upstream.connections
    for _ in range(10):
        assert _get(proxy, "/good/again")[0] == 200
    assert https_upstream.connections == before
