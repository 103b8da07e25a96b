"""Request smuggling and strict RFC 9112 framing: every ambiguous request is answered 400 and the
connection closed, and nothing of it reaches the upstream (checked with the upstream's own counters
and request log)."""

from __future__ import annotations

import time

import pytest
from harness import Proxy, RawConnection, Upstream, raw_request

pytestmark = pytest.mark.integration

H = b"Host: 127.0.0.1\r\n"
SMUGGLED = b"GET /echo?smuggled=1 HTTP/1.1\r\n" + H + b"\r\n"
POST = b"POST /echo HTTP/1.1\r\n" + H
GET = b"GET /echo HTTP/1.1\r\n" + H

# (request bytes, expected status); each request carries a would-be second request after it
CASES: dict[str, tuple[bytes, int]] = {
    # Content-Length and Transfer-Encoding together, in both orders
    "cl-and-te": (POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-and-cl": (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    # duplicate / malformed Content-Length
    "cl-duplicate-same": (POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "cl-duplicate-differ": (POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "cl-list": (POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "cl-letters": (POST + b"Content-Length: 5a\r\n\r\nhello", 400),
    "cl-plus": (POST + b"Content-Length: +5\r\n\r\nhello", 400),
    "cl-negative": (POST + b"Content-Length: -5\r\n\r\nhello", 400),
    "cl-hex": (POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "cl-inner-space": (POST + b"Content-Length: 1 5\r\n\r\nhello", 400),
    "cl-empty": (POST + b"Content-Length:\r\n\r\nhello", 400),
    "cl-overflow": (POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello", 400),
    # Transfer-Encoding other than a lone, final chunked
    "te-gzip": (POST + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    "te-chunked-gzip": (POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "te-xchunked": (POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "te-identity": (POST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te-chunked-twice": (
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-space-before-colon": (POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "te-vertical-tab": (POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "te-in-http10": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    # obs-fold, bare CR, bare LF
    "obs-fold-space": (GET + b"X-Foo: a\r\n b\r\n\r\n", 400),
    "obs-fold-tab": (GET + b"X-Foo: a\r\n\tb\r\n\r\n", 400),
    "bare-cr-in-value": (GET + b"X-Foo: a\rb\r\n\r\n", 400),
    "bare-cr-line-end": (GET + b"X-Foo: a\r\r\n\r\n", 400),
    "bare-cr-request-line": (b"GET /echo\r HTTP/1.1\r\n" + H + b"\r\n", 400),
    "bare-lf-line-ends": (b"GET /echo HTTP/1.1\n" + H + b"\n", 400),
    # NUL and control characters in names and values
    "nul-in-value": (GET + b"X-Foo: a\x00b\r\n\r\n", 400),
    "nul-in-name": (GET + b"X-F\x00oo: ab\r\n\r\n", 400),
    "ctl-in-value": (GET + b"X-Foo: a\x01b\r\n\r\n", 400),
    "esc-in-value": (GET + b"X-Foo: a\x1bb\r\n\r\n", 400),
    "del-in-value": (GET + b"X-Foo: a\x7fb\r\n\r\n", 400),
    "ctl-in-name": (GET + b"X-F\x01oo: ab\r\n\r\n", 400),
    "space-in-name": (GET + b"X Foo: ab\r\n\r\n", 400),
    "no-colon": (GET + b"X-Foo ab\r\n\r\n", 400),
    # whitespace before the colon, or before the first field
    "space-before-colon": (GET + b"X-Foo : ab\r\n\r\n", 400),
    "tab-before-colon": (GET + b"X-Foo\t: ab\r\n\r\n", 400),
    "host-space-before-colon": (b"GET /echo HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
    "space-before-first-field": (b"GET /echo HTTP/1.1\r\n X-Foo: ab\r\n" + H + b"\r\n", 400),
    # Host: missing on HTTP/1.1, repeated, or not a host
    "host-missing": (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    "host-repeated-differ": (b"GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    "host-repeated-same": (b"GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", 400),
    "host-list": (b"GET /echo HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n", 400),
    "host-with-path": (b"GET /echo HTTP/1.1\r\nHost: a.test/x\r\n\r\n", 400),
    "host-with-userinfo": (b"GET /echo HTTP/1.1\r\nHost: user@a.test\r\n\r\n", 400),
    # request line
    "method-invalid": (b"G@T /echo HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-with-space": (b"GET /ec ho HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-not-origin-form": (b"GET echo HTTP/1.1\r\n" + H + b"\r\n", 400),
    "version-lowercase": (b"GET /echo http/1.1\r\n" + H + b"\r\n", 400),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # versions
    "http-2.0": (b"GET /echo HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http-0.9-style": (b"GET /echo\r\n\r\n", 505),
    "connect": (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n" + H + b"\r\n", 405),
}  # fmt: skip


def _assert_rejected(resp, closed: bool, status: int) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == status, resp
    assert resp.header("Connection") == "close"
    assert closed, "the connection must be closed after a framing error"
    doc = resp.json()
    assert doc["status"] == status
    assert doc["request_id"] == resp.header("X-Request-Id")


def _nothing_reached(upstream: Upstream, before: dict[str, int]) -> None:
    after = upstream.stats()
    assert after["requests"] == before["requests"], "a request reached the upstream"
    assert after["bad"] == before["bad"]
    assert not any("smuggled=1" in entry["target"] for entry in upstream.log_since(before))


def test_the_harness_sees_a_request_that_does_reach_the_upstream(proxy: Proxy, upstream: Upstream) -> None:
    """The control case: the same check as below, for a valid request, must see it arrive."""
    before = upstream.stats()
    resp, _ = raw_request(proxy.port, b"GET /echo?control=1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert resp.status == 200
    assert upstream.stats()["requests"] == before["requests"] + 1
    assert [e["target"] for e in upstream.log_since(before)] == ["/echo?control=1"]


@pytest.mark.parametrize("case", list(CASES))
def test_ambiguous_request_is_rejected_and_never_forwarded(proxy: Proxy, upstream: Upstream, case: str) -> None:
    data, status = CASES[case]
    before = upstream.stats()
    resp, closed = raw_request(proxy.port, data + SMUGGLED)
    _assert_rejected(resp, closed, status)
    _nothing_reached(upstream, before)


@pytest.mark.parametrize(
    "case", ["cl-and-te", "cl-duplicate-differ", "te-gzip", "obs-fold-space", "nul-in-value", "host-repeated-differ"]
)
def test_rejection_after_a_good_request_on_the_same_connection(proxy: Proxy, upstream: Upstream, case: str) -> None:
    """A valid request, then a bad one pipelined behind it: the first is answered, the second refused."""
    data, status = CASES[case]
    before = upstream.stats()
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /echo?first HTTP/1.1\r\n" + H + b"\r\n" + data + SMUGGLED)
        first = conn.read_response()
        assert first.json()["target"] == "/echo?first"
        second = conn.read_response()
        assert second.status == status
        assert second.header("Connection") == "close"
        assert conn.wait_closed() == b""
    after = upstream.stats()
    assert after["requests"] == before["requests"] + 1
    assert not any("smuggled=1" in entry["target"] for entry in upstream.log_since(before))


def test_rejection_when_the_bad_field_arrives_in_a_later_segment(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n")
        time.sleep(0.3)
        conn.send(b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED)
        resp = conn.read_response()
        assert resp.status == 400
        assert conn.wait_closed() == b""
    _nothing_reached(upstream, before)


# ------------------------------------------------------------------ bad chunked bodies

BAD_CHUNKS = {
    "size-not-hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "size-negative": b"-3\r\nabc\r\n0\r\n\r\n",
    "size-0x-prefix": b"0x3\r\nabc\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "size-trailing-space": b"3 \r\nabc\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\nabcX\r\n0\r\n\r\n",
    "bare-lf-after-size": b"3\nabc\n0\n\n",
}


@pytest.mark.parametrize("case", list(BAD_CHUNKS))
def test_invalid_chunked_body_is_rejected_and_never_completes_upstream(
    proxy: Proxy, upstream: Upstream, case: str
) -> None:
    """The head is valid, so a streaming proxy may already have forwarded it; the upstream must
    still never receive a complete request, and nothing after the bad chunk."""
    before = upstream.stats()
    head = b"POST /echo?bad-chunk HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    resp, closed = raw_request(proxy.port, head + BAD_CHUNKS[case] + SMUGGLED)
    _assert_rejected(resp, closed, 400)
    after = upstream.stats()
    assert after["completed"] == before["completed"], "the upstream received a whole request"
    assert after["bad"] == before["bad"]
    assert not any("smuggled=1" in entry["target"] for entry in upstream.log_since(before))


def test_invalid_chunk_after_a_forwarded_head_aborts_the_upstream_request(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.3)  # the head and first chunk are on their way to the upstream by now
        conn.send(b"zz\r\n" + SMUGGLED)
        resp = conn.read_response()
        assert resp.status == 400
        assert conn.wait_closed() == b""
    time.sleep(0.2)
    after = upstream.stats()
    assert after["requests"] == before["requests"] + 1  # the head went ahead, as streaming does
    assert after["completed"] == before["completed"]  # but the request was cut, never completed
    assert not any("smuggled=1" in entry["target"] for entry in upstream.log_since(before))
