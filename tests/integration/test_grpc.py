"""gRPC end to end through HTTP/2 upstreams: grpcio clients and servers (generic handlers over raw
bytes, no generated stubs) on loopback, the proxy between them on an h2c listener and a TLS listener,
with h2:// (cleartext, prior knowledge) and https:// + `http2: true` peers."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from harness import ROOT, RawConnection, free_port
from tls_support import ListenerProxy, Pki

from portcullis.balancing.active import probe
from portcullis.config.schema import HealthCheck

_spec = importlib.util.spec_from_file_location("portcullis_test_grpc_echo", ROOT / "tests" / "servers" / "grpc_echo.py")
assert _spec is not None and _spec.loader is not None
grpc_echo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grpc_echo)

CALL_TIMEOUT = 10.0  # every call is bounded: a hang fails the test instead of stalling the suite


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-grpc"))


def _server(**kwargs: Any) -> Iterator[tuple[Any, int]]:
    server, port = grpc_echo.start(**kwargs)
    yield server, port
    server.stop(0)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[Any, int]]:
    yield from _server()


@pytest.fixture(scope="module")
def limited_server() -> Iterator[tuple[Any, int]]:
    yield from _server(max_streams=1)  # SETTINGS_MAX_CONCURRENT_STREAMS 1


@pytest.fixture(scope="module")
def draining_server() -> Iterator[tuple[Any, int]]:
    yield from _server()


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[tuple[Any, int]]:
    leaf = pki.ca.issue_cert("upstream.test", common_name="upstream.test")
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    yield from _server(cert=chain, key=leaf.private_key_pem.bytes())


class _ServerProcess:
    """grpc_echo.py as a subprocess, so that a test can kill it mid-call."""

    def __init__(self) -> None:
        script = ROOT / "tests" / "servers" / "grpc_echo.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        assert self.proc.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(15.0)
        if not line or not line[0]:
            self.kill()
            raise RuntimeError("the gRPC test server did not start")
        self.port = int(json.loads(line[0])["port"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5.0)


@pytest.fixture(scope="module")
def dying_server() -> Iterator[_ServerProcess]:
    server = _ServerProcess()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def proxy(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory, echo_server: tuple[Any, int],
    limited_server: tuple[Any, int], draining_server: tuple[Any, int], tls_server: tuple[Any, int],
    dying_server: _ServerProcess,
) -> Iterator[ListenerProxy]:
    def h2c(port: int, **extra: Any) -> dict[str, Any]:
        return {"peers": [{"url": f"h2://127.0.0.1:{port}"}], **extra}

    config = {
        "workers": 1,
        "upstreams": {
            "echo": h2c(echo_server[1]),
            "limited": h2c(limited_server[1]),
            "draining": h2c(draining_server[1]),
            "dying": h2c(dying_server.port, timeouts={"connect": "1s"}),
            "slow": h2c(echo_server[1], timeouts={"response": "1s"}, retries={"attempts": 0}),
            "checked": {
                "peers": [{"url": f"h2://127.0.0.1:{echo_server[1]}"}, {"url": f"h2://127.0.0.1:{free_port()}"}],
                "health": {"grpc_service": "test.Echo", "interval": "200ms", "timeout": "1s", "unhealthy_threshold": 1},
                "retries": {"attempts": 0},
            },
            "secure": {"peers": [{"url": f"https://127.0.0.1:{tls_server[1]}"}], "http2": True,
                       "tls": {"ca": str(pki.ca_path), "server_name": "upstream.test"}},
        },
        "routes": [
            {"name": name, "match": {"host": f"{name}.test"}, "upstream": name}
            for name in ("limited", "draining", "dying", "slow", "secure", "checked")
        ] + [{"name": "echo", "upstream": "echo"}],
    }  # fmt: skip
    tls = {"certificates": [pki.server_cert("proxy.test")]}
    listeners = [{"name": "plain", "h2c": True}, {"name": "tls", "tls": tls}]
    started = ListenerProxy(config, listeners, tmp_path_factory.mktemp("grpc-proxy"), "grpc")
    yield started
    started.stop()


def _channel(proxy: ListenerProxy, authority: str | None = None) -> Any:
    options = [("grpc.default_authority", authority)] if authority else []
    return grpc.insecure_channel(f"127.0.0.1:{proxy.port('plain')}", options=options)


def _unary(channel: Any) -> Any:
    return channel.unary_unary("/test.Echo/Unary")


class _Requests:
    """A request stream fed one message at a time (None ends it)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get(timeout=CALL_TIMEOUT)
            if item is None:
                return
            yield item


# =========================================================================== unary


def test_unary_call_with_status_and_trailers(proxy: ListenerProxy) -> None:
    with _channel(proxy) as channel:
        response, call = _unary(channel).with_call(b"hi", timeout=CALL_TIMEOUT)
    assert response == b"echo:hi"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-trail", "yes") in [(m.key, m.value) for m in call.trailing_metadata()]


def test_error_status_and_details_pass_through(proxy: ListenerProxy) -> None:
    with _channel(proxy) as channel, pytest.raises(grpc.RpcError) as caught:
        _unary(channel)(b"missing", timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such thing"


def test_forwarding_fields_reach_the_peer(proxy: ListenerProxy) -> None:
    with _channel(proxy) as channel:
        seen = json.loads(_unary(channel)(b"meta", timeout=CALL_TIMEOUT))
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert seen["x-request-id"]


# =========================================================================== streaming


def test_bidirectional_stream_interleaves(proxy: ListenerProxy) -> None:
    """Each reply arrives before the next message is sent: nothing is held back either way."""
    requests = _Requests()
    with _channel(proxy) as channel:
        responses = channel.stream_stream("/test.Echo/Bidi")(iter(requests), timeout=CALL_TIMEOUT)
        for word in (b"one", b"two", b"three"):
            requests.queue.put(word)
            assert next(responses) == b"re:" + word
        requests.queue.put(None)
        assert list(responses) == []
        assert responses.code() == grpc.StatusCode.OK


def test_large_streams_both_ways_under_flow_control(proxy: ListenerProxy) -> None:
    """4 MiB each way: far beyond every HTTP/2 window on both sides of the proxy."""
    with _channel(proxy) as channel:
        download = channel.unary_stream("/test.Echo/Download")(b"64:65536", timeout=CALL_TIMEOUT)
        assert sum(len(message) for message in download) == 64 * 65536
        chunk = grpc_echo.pattern(100_000)
        answer = json.loads(channel.stream_unary("/test.Echo/Upload")(iter([chunk] * 40), timeout=CALL_TIMEOUT))
    assert answer["messages"] == 40 and answer["bytes"] == 4_000_000
    assert answer["sha256"] == hashlib.sha256(chunk * 40).hexdigest()


def test_peer_stream_limit_opens_more_connections(proxy: ListenerProxy) -> None:
    """The peer allows one stream per connection: concurrent calls go over several connections."""
    with _channel(proxy, "limited.test") as channel:
        futures = [_unary(channel).future(b"sleep:0.5", timeout=CALL_TIMEOUT) for _ in range(4)]
        peers = {future.result() for future in futures}
    assert len(peers) >= 2, peers


# =========================================================================== failures


def test_peer_dying_mid_call_ends_the_call(proxy: ListenerProxy, dying_server: _ServerProcess) -> None:
    requests = _Requests()
    with _channel(proxy, "dying.test") as channel:
        responses = channel.stream_stream("/test.Echo/Bidi")(iter(requests), timeout=CALL_TIMEOUT)
        requests.queue.put(b"one")
        assert next(responses) == b"re:one"
        dying_server.kill()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            requests.queue.put(b"two")
            next(responses)
        assert time.monotonic() - started < 5.0
        assert caught.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        requests.queue.put(None)
        # and a new call finds the peer gone: the proxy answers 502, which gRPC reports as UNAVAILABLE
        with pytest.raises(grpc.RpcError) as refused:
            _unary(channel)(b"hi", timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_response_timeout_bounds_a_silent_peer(proxy: ListenerProxy) -> None:
    started = time.monotonic()
    with _channel(proxy, "slow.test") as channel, pytest.raises(grpc.RpcError) as caught:
        _unary(channel)(b"sleep:4", timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the proxy's 504
    assert time.monotonic() - started < 3.5


def test_graceful_shutdown_of_the_peer_lets_calls_finish(
    proxy: ListenerProxy, draining_server: tuple[Any, int]
) -> None:
    """The peer's GOAWAY (NO_ERROR) stops new streams; the one in progress completes."""
    with _channel(proxy, "draining.test") as channel:
        assert _unary(channel)(b"warm", timeout=CALL_TIMEOUT) == b"echo:warm"
        future = _unary(channel).future(b"sleep:1", timeout=CALL_TIMEOUT)
        time.sleep(0.3)
        stopped = draining_server[0].stop(grace=5.0)
        assert future.result().startswith(b"ipv4:127.0.0.1:")
        assert stopped.wait(CALL_TIMEOUT)


# =========================================================================== health checks


def test_grpc_health_protocol(echo_server: tuple[Any, int]) -> None:
    url = f"h2://127.0.0.1:{echo_server[1]}"

    def check(service: str) -> tuple[bool, str]:
        return asyncio.run(probe(url, HealthCheck(grpc_service=service, timeout=5.0), None, http2=True))

    assert check("") == (True, "gRPC health check: SERVING")
    assert check("down") == (False, "gRPC health check: not SERVING")
    assert check("other") == (False, "gRPC health check answered HTTP 200, grpc-status 5")
    ok, reason = asyncio.run(probe(url, HealthCheck(path="/healthz", timeout=5.0), None, http2=True))
    assert not ok and "reset" in reason  # a gRPC server refuses a GET: hence grpc_service


def test_active_checks_take_a_dead_http2_peer_out(proxy: ListenerProxy) -> None:
    """Two peers, one never listening: once the master's checks mark it down, every call succeeds."""
    deadline = time.monotonic() + 10.0
    streak = 0
    with _channel(proxy, "checked.test") as channel:
        while streak < 8 and time.monotonic() < deadline:
            try:
                _unary(channel)(b"x", timeout=CALL_TIMEOUT)
                streak += 1
            except grpc.RpcError:
                streak = 0
                time.sleep(0.2)
    assert streak >= 8


# =========================================================================== TLS and HTTP/1.1


def test_https_peer_with_http2(proxy: ListenerProxy) -> None:
    requests = _Requests()
    with _channel(proxy, "secure.test") as channel:
        assert _unary(channel)(b"tls", timeout=CALL_TIMEOUT) == b"echo:tls"
        responses = channel.stream_stream("/test.Echo/Bidi")(iter(requests), timeout=CALL_TIMEOUT)
        requests.queue.put(b"a")
        assert next(responses) == b"re:a"
        requests.queue.put(None)
        assert list(responses) == []


def test_tls_listener_to_h2c_peer(proxy: ListenerProxy, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_path.read_bytes())
    options = [("grpc.ssl_target_name_override", "proxy.test")]
    with grpc.secure_channel(f"127.0.0.1:{proxy.port('tls')}", credentials, options=options) as channel:
        response, call = _unary(channel).with_call(b"over tls", timeout=CALL_TIMEOUT)
    assert response == b"echo:over tls" and call.code() == grpc.StatusCode.OK


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def _grpc_post(proxy: ListenerProxy, message: bytes) -> Any:
    body = _grpc_frame(message)
    head = (
        "POST /test.Echo/Unary HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/grpc\r\nTE: trailers\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with RawConnection(proxy.port("plain"), timeout=CALL_TIMEOUT) as conn:
        conn.send(head.encode() + body)
        return conn.read_response("POST")


def test_http1_client_gets_the_body_and_trailers(proxy: ListenerProxy) -> None:
    resp = _grpc_post(proxy, b"h1")
    assert resp.status == 200 and resp.chunked
    assert resp.body == _grpc_frame(b"echo:h1")
    trailers = dict(resp.trailers)
    assert trailers["grpc-status"] == "0" and trailers["x-trail"] == "yes"


def test_http1_client_gets_a_trailers_only_answer_with_a_length(proxy: ListenerProxy) -> None:
    resp = _grpc_post(proxy, b"missing")
    assert resp.status == 200
    assert resp.header("grpc-status") == "5" and resp.header("content-length") == "0"


def test_protocol_upgrade_is_refused_for_an_http2_upstream(proxy: ListenerProxy) -> None:
    request = (
        b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with RawConnection(proxy.port("plain"), timeout=CALL_TIMEOUT) as conn:
        conn.send(request)
        assert conn.read_response().status == 502

