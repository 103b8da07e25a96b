"""Timeouts on both sides, with 1 s values so each case takes about a second.

The engine checks deadlines four times a second, so expected times have a quarter second of slack
either way, plus scheduling.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import Proxy, RawConnection, Upstream, free_port

pytestmark = pytest.mark.integration

H = b"Host: 127.0.0.1\r\n"
T = 1.0  # every timeout in this module's config but the upstream response timeout
T_RESPONSE = 2.0  # longer than the client body timeout, so a stalled client body is told apart
EARLY = 0.3  # a deadline is set from the watchdog's clock, which may be up to one tick (0.25 s) old
LATE = 1.5  # one tick late, plus scheduling on a busy 2-core machine; still well short of the 4 s stalls


@pytest.fixture(scope="module")
def blackhole_port() -> Iterator[int]:
    """A port whose connects hang: a listener with a full accept queue that never accepts
    (the kernel then drops new SYNs). Outbound addresses cannot be used: the sandbox may intercept them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.1)
    yield port
    for s in fillers:
        s.close()
    srv.close()


@pytest.fixture(scope="module")
def timeout_proxy(make_proxy: Callable[[dict[str, Any]], Proxy], upstream: Upstream, blackhole_port: int) -> Proxy:
    timeouts = {"connect": "1s", "response": f"{T_RESPONSE:g}s", "idle": "1s"}
    return make_proxy(
        {
            "workers": 1,
            "server": {"timeouts": {"client_header": "1s", "client_body": "1s", "keepalive": "1s"}},
            "upstreams": {
                "main": {"peers": [{"url": upstream.url}], "timeouts": timeouts},
                # no retries: one attempt, so the time to the 502 is one connect timeout
                "dead": {"peers": [{"url": f"http://127.0.0.1:{free_port()}"}], "timeouts": timeouts,
                         "retries": {"attempts": 0}},
                "blackhole": {"peers": [{"url": f"http://127.0.0.1:{blackhole_port}"}], "timeouts": timeouts,
                              "retries": {"attempts": 0}},
            },
            "routes": [
                {"name": "dead", "match": {"path_prefix": "/dead/"}, "upstream": "dead"},
                {"name": "blackhole", "match": {"path_prefix": "/blackhole/"}, "upstream": "blackhole"},
                {"name": "all", "match": {"path_prefix": "/"}, "upstream": "main"},
            ],
        }
    )


def _timed_response(conn: RawConnection, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    resp = conn.read_response(timeout=timeout)
    return resp, time.monotonic() - start


def _assert_error(resp, status: int) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == status, resp
    doc = resp.json()
    assert doc["status"] == status
    assert doc["request_id"] == resp.header("X-Request-Id")


# ------------------------------------------------------------------ client side

def test_half_a_head_gets_408(timeout_proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /echo HTTP/1.1\r\n" + H)
        resp, elapsed = _timed_response(conn)
        _assert_error(resp, 408)
        assert resp.header("Connection") == "close"
        assert conn.wait_closed() == b""
    assert T - EARLY <= elapsed <= T + LATE
    assert upstream.stats()["requests"] == before["requests"]


def test_a_trickled_head_gets_408_when_the_whole_head_is_late(timeout_proxy: Proxy) -> None:
    """Slowloris: a byte every 0.2 s keeps the socket busy, but the head as a whole is late."""
    with RawConnection(timeout_proxy.port) as conn:
        start = time.monotonic()
        conn.send(b"GET /echo HTTP/1.1\r\n" + H)
        try:
            for _ in range(20):
                time.sleep(0.2)
                conn.send(b"X")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.read_response()
        elapsed = time.monotonic() - start
        assert resp.status == 408
    assert elapsed <= T + LATE


def test_a_silent_connection_is_closed(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        start = time.monotonic()
        rest = conn.wait_closed(T + 2.0)
        assert time.monotonic() - start >= T - EARLY
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_gets_408(timeout_proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nhalf.")
        resp, elapsed = _timed_response(conn)
        _assert_error(resp, 408)
        assert conn.wait_closed() == b""
    assert T - EARLY <= elapsed <= T + LATE
    assert upstream.stats()["completed"] == before["completed"]


def test_a_slow_but_steady_body_is_fine(timeout_proxy: Proxy) -> None:
    """The body timeout is the longest pause, not the whole body: 8 pieces, 0.4 s apart, take 3 s,
    longer than both the client body and the upstream response timeouts."""
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 8\r\n\r\n")
        for i in range(8):
            time.sleep(0.4)
            conn.send(b"%d" % i)
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.json()["length"] == 8


def test_idle_keepalive_connection_is_closed(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
        assert conn.read_response().status == 200
        start = time.monotonic()
        assert conn.wait_closed(T + 2.0) == b""
        assert time.monotonic() - start >= T - EARLY


def test_keepalive_connection_used_within_the_timeout_stays_open(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        for _ in range(6):  # 6 x 0.3 s: longer than the timeout in total, never idle that long
            conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
            assert conn.read_response().status == 200
            time.sleep(0.3)
        assert conn.is_open(0.1)


# ------------------------------------------------------------------ upstream side

def test_connect_refused_is_502(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /dead/x HTTP/1.1\r\n" + H + b"\r\n")
        resp, elapsed = _timed_response(conn)
        _assert_error(resp, 502)
        assert elapsed < T
        conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")  # the client connection is still good
        assert conn.read_response().status == 200


def test_connect_timeout_is_502(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /blackhole/x HTTP/1.1\r\n" + H + b"\r\n")
        resp, elapsed = _timed_response(conn)
        _assert_error(resp, 502)
        assert T - EARLY <= elapsed <= T + LATE


def test_slow_response_head_is_504(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /slow-head/4 HTTP/1.1\r\n" + H + b"\r\n")
        resp, elapsed = _timed_response(conn)
        _assert_error(resp, 504)
        assert T_RESPONSE - EARLY <= elapsed <= T_RESPONSE + LATE


def test_response_head_within_the_timeout_is_fine(timeout_proxy: Proxy) -> None:
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /slow-head/0.3 HTTP/1.1\r\n" + H + b"\r\n")
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, b"slow head\n")


def test_upstream_stalling_mid_body_cuts_the_response(timeout_proxy: Proxy) -> None:
    """The head and 10 of 20 bytes are sent, then the peer stalls: the client sees a truncated
    body (the connection closes before Content-Length is reached), never a made-up ending."""
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /slow-body/4 HTTP/1.1\r\n" + H + b"\r\n")
        start = time.monotonic()
        received = conn.wait_closed(5)
        elapsed = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Length: 20\r\n" in received
    assert received.endswith(b"\r\n\r\n0123456789")
    assert T - EARLY <= elapsed <= T + LATE


def test_pool_connection_closed_by_the_upstream_while_idle_is_not_an_error(
    timeout_proxy: Proxy, upstream: Upstream
) -> None:
    """After the peer closes a pooled connection, the next request gets a fresh one, not a 502."""
    with RawConnection(timeout_proxy.port) as conn:
        conn.send(b"GET /close HTTP/1.1\r\n" + H + b"\r\n")
        assert conn.read_response().status == 200
        time.sleep(0.2)
        conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
        assert conn.read_response().status == 200


def test_blackhole_port_really_hangs(blackhole_port: int) -> None:
    """Keeps test_connect_timeout_is_502 honest: a connect to the blackhole port does not complete."""
    s = socket.socket()
    s.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):
            s.connect(("127.0.0.1", blackhole_port))
    finally:
        s.close()
