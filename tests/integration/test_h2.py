"""HTTP/2 downstream: ALPN, multiplexing through the shared exchange, flow control both ways,
large bodies, prior-knowledge h2c, rapid reset, GOAWAY on shutdown, HSTS and mTLS over h2."""

from __future__ import annotations

import hashlib
import json
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import h2.errors
import pytest
from harness import Upstream, pattern_sha256
from tls_support import H2Client, ListenerProxy, Pki, tls_connect


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-h2"))


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ListenerProxy]]:
    procs: list[ListenerProxy] = []
    workdir = tmp_path_factory.mktemp("h2-proxies")

    def start(config: dict[str, Any], listeners: list[dict[str, Any]]) -> ListenerProxy:
        proxy = ListenerProxy(config, listeners, workdir, f"h2p{len(procs)}")
        procs.append(proxy)
        return proxy

    yield start
    for proxy in procs:
        proxy.stop()


def _config(up: Upstream, **http2: Any) -> dict[str, Any]:
    return {
        "workers": 1,
        "server": {"http2": http2} if http2 else {},
        "upstreams": {"main": {"peers": [{"url": up.url}]}},
        "routes": [
            {"name": "fixed", "match": {"path": "/fixed"},
             "filters": [{"type": "respond", "status": 200, "body": "ok"}]},
            {"name": "all", "match": {"path_prefix": "/"}, "upstream": "main"},
        ],
    }


@pytest.fixture(scope="module")
def h2_proxy(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> ListenerProxy:
    tls = {"certificates": [pki.server_cert("a.test")], "hsts": {"max_age": "24h"}}
    listeners = [{"name": "secure", "tls": tls}, {"name": "plain", "h2c": True}]
    return started(_config(upstream, max_resets=20, reset_window="10s", max_concurrent_streams=64), listeners)


@pytest.fixture
def client(h2_proxy: ListenerProxy, pki: Pki) -> Iterator[H2Client]:
    c = H2Client(h2_proxy.port("secure"), pki.client_context())
    yield c
    c.close()


def test_alpn_offers_h2_and_http11(h2_proxy: ListenerProxy, pki: Pki) -> None:
    ctx = pki.client_context(alpn=["http/1.1"])
    with tls_connect(h2_proxy.port("secure"), ctx, "a.test") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"GET /fixed HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_simple_get_through_exchange(client: H2Client) -> None:
    sid = client.request("GET", "/echo?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-test", "yes")])
    status, headers, body = client.response(sid)
    assert status == 200
    assert headers[b"strict-transport-security"] == b"max-age=86400"
    assert b"x-request-id" in headers
    doc = json.loads(body)
    assert doc["target"] == "/echo?q=1" and doc["version"] == "HTTP/1.1"
    seen = {k.lower(): v for k, v in doc["headers"]}
    assert seen["host"] == "a.test"
    assert seen["cookie"] == "a=1; b=2"
    assert seen["x-test"] == "yes"
    assert seen["x-forwarded-proto"] == "https"


def test_generated_response_and_404(client: H2Client) -> None:
    sid = client.request("GET", "/fixed")
    assert client.response(sid)[0] == 200 and client.response(sid)[2] == b"ok"


def test_multiplexed_requests(client: H2Client) -> None:
    sids = [client.request("GET", f"/echo/{i}") for i in range(40)]
    for i, sid in enumerate(sids):
        status, _, body = client.response(sid, timeout=20)
        assert status == 200
        assert json.loads(body)["target"] == f"/echo/{i}"


def test_large_download_with_flow_control(client: H2Client) -> None:
    n = 6_000_000
    sid = client.request("GET", f"/size/{n}")
    status, headers, body = client.response(sid, timeout=30)
    assert status == 200 and len(body) == n
    assert headers[b"content-length"] == str(n).encode()
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(n)


def test_large_upload_chunked_and_with_length(client: H2Client) -> None:
    body = bytes(range(256)) * 20_000  # 5 MB, far over the 256 KiB stream window
    sid = client.request("POST", "/upload", body=body)
    status, _, resp = client.response(sid, timeout=30)
    assert status == 200
    assert json.loads(resp) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    sid = client.request("POST", "/upload", body=body, headers=[("content-length", str(len(body)))])
    status, _, resp = client.response(sid, timeout=30)
    assert json.loads(resp)["length"] == len(body)


def test_server_respects_client_window(h2_proxy: ListenerProxy, pki: Pki) -> None:
    """The client grants 16 KiB per stream and acknowledges nothing: the proxy must stop there,
    then send the rest as the client opens its window."""
    import h2.settings

    c = H2Client(h2_proxy.port("secure"), pki.client_context(), auto_ack=False,
                 settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})  # fmt: skip
    try:
        n = 1_000_000
        sid = c.request("GET", f"/size/{n}")
        c.wait(lambda: len(c.data.get(sid, b"")) >= 16384, 10)
        time.sleep(0.5)
        c.pump(0.3)
        assert len(c.data[sid]) == 16384, "the proxy overran the stream window"
        deadline = time.monotonic() + 30
        while sid not in c.ended and time.monotonic() < deadline:
            pending = c.unacked.pop(sid, 0)
            if pending:
                c.conn.acknowledge_received_data(pending, sid)
                c.flush()
            c.pump(0.2)
        assert hashlib.sha256(bytes(c.data[sid])).hexdigest() == pattern_sha256(n)
    finally:
        c.close()


def test_h2c_prior_knowledge_on_plain_listener(h2_proxy: ListenerProxy) -> None:
    c = H2Client(h2_proxy.port("plain"))
    try:
        sid = c.request("GET", "/echo")
        status, headers, body = c.response(sid)
        assert status == 200 and b"strict-transport-security" not in headers
        assert {k.lower(): v for k, v in json.loads(body)["headers"]}["x-forwarded-proto"] == "http"
    finally:
        c.close()


def test_plain_listener_with_h2c_still_serves_http11(h2_proxy: ListenerProxy) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", h2_proxy.port("plain")), timeout=5) as s:
        s.sendall(b"GET /fixed HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"


def test_rapid_reset_gets_goaway(h2_proxy: ListenerProxy, pki: Pki) -> None:
    c = H2Client(h2_proxy.port("secure"), pki.client_context())
    try:
        for _ in range(60):
            sid = c.request("GET", "/echo")
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
        assert c.wait(lambda: c.goaway is not None, 10)
        assert c.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert c.wait(lambda: c.closed, 5)
    finally:
        c.close()


def test_cancelled_streams_below_the_limit_are_fine(client: H2Client) -> None:
    for _ in range(5):
        sid = client.request("GET", "/echo")
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.flush()
    sid = client.request("GET", "/fixed")
    assert client.response(sid)[0] == 200 and client.goaway is None


def test_oversized_header_list_refused(client: H2Client) -> None:
    client.request("GET", "/echo", headers=[(f"x-big-{i}", "v" * 4000) for i in range(40)])  # 160 KB
    assert client.wait(lambda: client.goaway is not None or client.closed, 10)


def test_goaway_on_shutdown(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> None:
    proxy = started(_config(upstream), [{"name": "s", "tls": {"certificates": [pki.server_cert("a.test")]}}])
    c = H2Client(proxy.port("s"), pki.client_context())
    try:
        sid = c.request("GET", "/echo")
        assert c.response(sid)[0] == 200
        proxy.proc.send_signal(signal.SIGTERM)
        assert c.wait(lambda: c.goaway is not None, 10)
        assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert c.goaway.last_stream_id == sid
    finally:
        c.close()


def test_mtls_identity_over_h2(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> None:
    auth = {"ca": str(pki.ca_path), "required": True, "forward_headers": {"subject": "X-Client-Subject"}}
    tls = {"certificates": [pki.server_cert("a.test")], "client_auth": auth}
    proxy = started(_config(upstream), [{"name": "s", "tls": tls}])  # fmt: skip
    ctx: ssl.SSLContext = pki.client_context(pki.client_cert("bob.clients.test"))
    c = H2Client(proxy.port("s"), ctx)
    try:
        sid = c.request("GET", "/echo", headers=[("x-client-subject", "CN=forged")])
        _, _, body = c.response(sid)
        subjects = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-client-subject"]
        assert len(subjects) == 1 and "CN=bob.clients.test" in subjects[0]
    finally:
        c.close()


def test_goaway_on_reload(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> None:
    """A reload retires the runtime: its HTTP/2 connections get GOAWAY NO_ERROR, the stream in
    progress still completes, and new connections serve the new config."""
    proxy = started(_config(upstream), [{"name": "s", "tls": {"certificates": [pki.server_cert("a.test")]}}])
    c = H2Client(proxy.port("s"), pki.client_context())
    try:
        assert c.response(c.request("GET", "/fixed"))[2] == b"ok"
        cfg = json.loads(proxy.config_path.read_text())
        cfg["routes"][0]["filters"][0]["body"] = "reloaded"
        proxy.config_path.write_text(json.dumps(cfg))
        proxy.proc.send_signal(signal.SIGHUP)
        assert c.wait(lambda: c.goaway is not None, 10)
        assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    finally:
        c.close()
    fresh = H2Client(proxy.port("s"), pki.client_context())
    try:
        assert fresh.response(fresh.request("GET", "/fixed"))[2] == b"reloaded"
    finally:
        fresh.close()


def test_h2c_silent_client_is_disconnected(h2_proxy: ListenerProxy) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", h2_proxy.port("plain")), timeout=15) as s:
        s.sendall(b"PRI * HTTP")  # a prefix of the preface, then nothing
        started = time.monotonic()
        assert s.recv(10) == b""
        assert 5 < time.monotonic() - started < 14


def test_stalled_request_body_times_out(pki: Pki, upstream: Upstream, started: Callable[..., ListenerProxy]) -> None:
    cfg = _config(upstream)
    cfg["server"] = {"timeouts": {"client_body": "1s"}}
    proxy = started(cfg, [{"name": "s", "tls": {"certificates": [pki.server_cert("a.test")]}}])
    c = H2Client(proxy.port("s"), pki.client_context())
    try:
        stalled = c.request("POST", "/upload", body=b"x" * 100, end=False)  # ... and nothing more
        started_at = time.monotonic()
        quick = c.request("GET", "/fixed")
        assert c.response(quick)[2] == b"ok"  # the other streams are served meanwhile
        assert c.wait(lambda: stalled in c.ended or stalled in c.resets, 10)
        assert dict(c.headers[stalled])[b":status"] == b"408"
        assert 0.5 < time.monotonic() - started_at < 5  # (the watchdog ticks every 0.25 s)
    finally:
        c.close()
