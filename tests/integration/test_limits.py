"""Size limits: request line 414, head 431, body over the route's `limits.max_body` 413; just under each passes."""

from __future__ import annotations

import contextlib
import time

import pytest
from harness import Proxy, RawConnection, Upstream, raw_request

pytestmark = pytest.mark.integration

H = b"Host: 127.0.0.1\r\n"
# the main config uses the defaults: 8 KiB request line, 32 KiB of header fields, 100 fields


def _rejected(resp, closed: bool, status: int) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == status, resp
    assert resp.header("Connection") == "close"
    assert closed
    assert resp.json()["request_id"] == resp.header("X-Request-Id")


def test_request_line_just_under_the_limit_passes(proxy: Proxy) -> None:
    target = b"/echo?" + b"a" * (8000 - 6)
    resp, _ = raw_request(proxy.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert resp.status == 200
    assert resp.json()["target"] == target.decode()


@pytest.mark.parametrize("pieces", [1, 20], ids=["one-segment", "trickled"])
def test_long_request_line_is_414(proxy: Proxy, upstream: Upstream, pieces: int) -> None:
    before = upstream.stats()
    data = b"GET /echo?" + b"a" * 10_000 + b" HTTP/1.1\r\n" + H + b"\r\n"
    with RawConnection(proxy.port) as conn:
        step = len(data) // pieces + 1
        try:
            for i in range(0, len(data), step):
                conn.send(data[i : i + step])
                if pieces > 1:
                    time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end of the line: fine, the answer is already there
        resp = conn.read_response()
        _rejected(resp, not conn.is_open(1.0), 414)
    assert upstream.stats()["requests"] == before["requests"]


def test_headers_just_under_the_limit_pass(proxy: Proxy) -> None:
    fields = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 1000) for i in range(30))  # ~30 KiB
    resp, _ = raw_request(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + fields + b"Connection: close\r\n\r\n")
    assert resp.status == 200
    assert ["X-H29", "v" * 1000] in resp.json()["headers"]


@pytest.mark.parametrize(
    "fields",
    [
        b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 1000) for i in range(40)),
        b"X-Big: " + b"v" * 40_000 + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(150)),
    ],
    ids=["total-bytes", "one-huge-field", "too-many-fields"],
)
def test_oversized_head_is_431(proxy: Proxy, upstream: Upstream, fields: bytes) -> None:
    before = upstream.stats()
    resp, closed = raw_request(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + fields + b"\r\n")
    _rejected(resp, closed, 431)
    assert upstream.stats()["requests"] == before["requests"]


def test_oversized_head_trickled_is_431(proxy: Proxy, upstream: Upstream) -> None:
    """A head that never ends, sent in small pieces, is cut at the limit rather than buffered."""
    before = upstream.stats()
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /echo HTTP/1.1\r\n" + H)
        try:
            for i in range(80):
                conn.send(b"X-Slow-%d: %s\r\n" % (i, b"v" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.read_response()
        assert resp.status == 431
    assert upstream.stats()["requests"] == before["requests"]


def test_body_at_the_route_limit_passes(proxy: Proxy) -> None:
    resp, _ = raw_request(
        proxy.port,
        b"POST /limited/upload HTTP/1.1\r\n" + H + b"Content-Length: 1024\r\nConnection: close\r\n\r\n" + b"x" * 1024,
    )
    assert resp.status == 200
    assert resp.json()["length"] == 1024


def test_content_length_over_the_route_limit_is_413_before_any_body(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    resp, closed = raw_request(proxy.port, b"POST /limited/upload HTTP/1.1\r\n" + H + b"Content-Length: 1025\r\n\r\n")
    _rejected(resp, closed, 413)
    assert upstream.stats()["requests"] == before["requests"]


def test_chunked_body_over_the_route_limit_is_413(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    body = b"200\r\n" + b"x" * 512 + b"\r\n"
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /limited/upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body * 2)
        time.sleep(0.2)  # exactly at the limit so far
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(body + b"0\r\n\r\n")
        resp = conn.read_response()
        _rejected(resp, not conn.is_open(1.0), 413)
    after = upstream.stats()
    assert after["completed"] == before["completed"]  # the streamed start was cut, never completed


def test_the_limit_is_per_route(proxy: Proxy) -> None:
    """The same 2 KiB body is fine on a route without the 1 KiB limit."""
    resp, _ = raw_request(
        proxy.port,
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 2048\r\nConnection: close\r\n\r\n" + b"x" * 2048,
    )
    assert resp.status == 200
    assert resp.json()["length"] == 2048


def test_oversized_request_trailers_are_431(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    trailers = b"".join(b"X-T%02d: %s\r\n" % (i, b"t" * 1000) for i in range(40))
    with RawConnection(proxy.port) as conn:
        head = b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(head + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
        resp = conn.read_response()
        assert resp.status == 431
    assert upstream.stats()["completed"] == before["completed"]


def test_trailer_fed_slowly_is_bounded(proxy: Proxy, upstream: Upstream) -> None:
    """A trailer line that never ends is cut at the head limit, not buffered without end."""
    before = upstream.stats()
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Slow: ")
        try:
            for _ in range(60):
                conn.send(b"t" * 1000)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.read_response()
        assert resp.status == 431
    assert upstream.stats()["completed"] == before["completed"]
