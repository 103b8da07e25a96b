"""Plain proxying through a real `portcullis run`: bodies, chunked both ways, HEAD, 204/304, 100-continue."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import httpx
import pytest
from harness import Proxy, RawConnection, Upstream, pattern_chunks, raw_request

pytestmark = pytest.mark.integration

HOST = b"Host: 127.0.0.1\r\n"


def test_get_reaches_upstream_with_target_and_answer_comes_back(client: httpx.Client) -> None:
    r = client.get("/echo/a/b?x=1&y=%20z", headers={"X-Custom": "value"})
    assert r.status_code == 200
    assert r.headers["X-Upstream"].startswith("A")
    doc = r.json()
    assert doc["method"] == "GET"
    assert doc["target"] == "/echo/a/b?x=1&y=%20z"
    assert doc["version"] == "HTTP/1.1"
    assert ["X-Custom", "value"] in doc["headers"]
    assert doc["body_length"] == 0


@pytest.mark.parametrize("size", [1, 1000, 300_000])
def test_post_content_length_body_arrives_intact(client: httpx.Client, size: int) -> None:
    body = os.urandom(size)
    r = client.post("/echo", content=body)
    assert r.status_code == 200
    doc = r.json()
    assert doc["body_length"] == size
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["Content-Length", str(size)] in doc["headers"]


@pytest.mark.parametrize("size", [0, 1, 70_000, 2_000_000])
def test_response_body_with_content_length(client: httpx.Client, size: int) -> None:
    r = client.get(f"/size/{size}")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(size)
    assert r.content == b"".join(pattern_chunks(size))


def test_put_delete_patch_options_are_forwarded(client: httpx.Client) -> None:
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        r = client.request(method, "/echo", content=b"abc")
        assert r.status_code == 200
        assert r.json()["method"] == method
        assert r.json()["body_length"] == 3


def test_upstream_status_codes_are_passed_through(client: httpx.Client) -> None:
    for code in (201, 404, 418, 500, 503):
        r = client.get(f"/status/{code}")
        assert r.status_code == code
        assert r.text == f"status {code}\n"


# ------------------------------------------------------------------ chunked both ways

def test_chunked_request_body_reaches_upstream_intact_httpx(client: httpx.Client) -> None:
    pieces = [os.urandom(n) for n in (1, 10, 4096, 65536, 100_000, 3)]

    def gen():  # a generator body: httpx sends it chunked
        yield from pieces

    r = client.post("/echo", content=gen())
    assert r.status_code == 200
    doc = r.json()
    body = b"".join(pieces)
    assert doc["body_length"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_raw_with_extensions(proxy: Proxy) -> None:
    body = b"3;ext=1\r\nabc\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"
    resp, _ = raw_request(
        proxy.port,
        b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body,
    )
    assert resp.status == 200
    doc = resp.json()
    assert doc["body_length"] == 29
    assert doc["body_sha256"] == hashlib.sha256(b"abc" + b"z" * 26).hexdigest()


def test_chunked_request_trailers_reach_upstream(proxy: Proxy) -> None:
    resp, _ = raw_request(
        proxy.port,
        b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Req-Trailer: yes\r\n\r\n",
    )
    assert resp.status == 200
    doc = resp.json()
    assert doc["body_length"] == 5
    assert doc["trailers"] == [["X-Req-Trailer", "yes"]]


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_chunked_response_body_and_trailer_reach_client(proxy: Proxy, size: int) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /chunked/%d HTTP/1.1\r\n" % size + HOST + b"\r\n")
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.chunked
    assert resp.body == b"".join(pattern_chunks(size))
    assert ("X-Trailer", "done") in resp.trailers


def test_chunked_response_through_httpx(client: httpx.Client) -> None:
    r = client.get("/chunked/123457")
    assert r.status_code == 200
    assert r.content == b"".join(pattern_chunks(123457))


# ------------------------------------------------------------------ bodiless responses

def test_head_has_no_body_and_keeps_content_length(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"HEAD /size/5000 HTTP/1.1\r\n" + HOST + b"\r\n")
        head = conn.read_response("HEAD")
        assert head.status == 200
        assert head.header("Content-Length") == "5000"
        # if any body byte had been sent, it would be read as the start of the next response
        conn.send(b"GET /size/10 HTTP/1.1\r\n" + HOST + b"\r\n")
        nxt = conn.read_response()
        assert nxt.status == 200
        assert nxt.body == bytes(range(10))
        assert conn.buf == b""


def test_head_of_a_chunked_resource_has_no_body(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"HEAD /chunked/5000 HTTP/1.1\r\n" + HOST + b"\r\nGET /size/3 HTTP/1.1\r\n" + HOST + b"\r\n")
        head = conn.read_response("HEAD")
        assert head.status == 200
        nxt = conn.read_response()
        assert (nxt.status, nxt.body) == (200, b"\x00\x01\x02")


def test_head_through_httpx(client: httpx.Client) -> None:
    r = client.head("/size/777")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == "777"
    assert r.content == b""


@pytest.mark.parametrize("code", [204, 304])
def test_204_and_304_have_no_body(proxy: Proxy, code: int) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /status/%d HTTP/1.1\r\n" % code + HOST + b"\r\n")
        resp = conn.read_response()
        assert resp.status == code
        assert resp.header("Transfer-Encoding") is None
        if code == 204:
            assert resp.header("Content-Length") is None
        else:
            assert resp.header("ETag") == '"v1"'
        conn.send(b"GET /size/4 HTTP/1.1\r\n" + HOST + b"\r\n")
        nxt = conn.read_response()
        assert (nxt.status, nxt.body) == (200, b"\x00\x01\x02\x03")
        assert conn.buf == b""


# ------------------------------------------------------------------ Expect: 100-continue

def test_expect_100_continue(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        interim = conn.read_response(timeout=5)
        assert interim.status == 100
        conn.send(b"hello world")
        final = conn.read_response()
        assert final.status == 200
        doc = final.json()
        assert doc["body_length"] == 11
        assert doc["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        # exactly one 100 Continue: the upstream's own interim answer is not relayed
        assert conn.buf == b""
        assert conn.is_open()


def test_expect_100_continue_chunked(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        assert conn.read_response().status == 100
        conn.send(b"4\r\nabcd\r\n0\r\n\r\n")
        final = conn.read_response()
        assert final.status == 200
        assert final.json() == {"length": 4, "sha256": hashlib.sha256(b"abcd").hexdigest()}


def test_expect_100_continue_not_sent_when_the_proxy_answers_itself(proxy: Proxy) -> None:
    """A route answering by itself, or a body over the limit, gets the final answer with no 100 first."""
    resp, closed = raw_request(
        proxy.port,
        b"POST /limited/upload HTTP/1.1\r\n" + HOST + b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert resp.status == 413
    assert closed  # the body it never asked for is not read as a next request


# ------------------------------------------------------------------ HTTP/1.0 clients

def test_http10_client_gets_answer_and_close(proxy: Proxy, upstream: Upstream) -> None:
    resp, closed = raw_request(proxy.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    assert resp.json()["version"] == "HTTP/1.1"  # the proxy speaks HTTP/1.1 to its peers
    assert closed


def test_http10_chunked_upstream_answer_is_close_delimited(proxy: Proxy) -> None:
    """An HTTP/1.0 client cannot read chunked: the body ends with the connection instead."""
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /chunked/5000 HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == b"".join(pattern_chunks(5000))
        assert conn.eof


@pytest.mark.parametrize("pattern", ["size-then-data", "data-then-next-size", "byte-by-byte-sizes"])
def test_chunked_request_in_any_segmentation(proxy: Proxy, pattern: str) -> None:
    """However the chunks are cut into TCP segments, the body arrives whole (no false 431/400)."""
    piece = bytes(range(250)) * 4  # 1000 bytes
    n = 100
    with RawConnection(proxy.port, timeout=10) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.send(b"POST /upload HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
        if pattern == "size-then-data":
            for _ in range(n):
                conn.send(b"3e8\r\n" + piece + b"\r\n")
                time.sleep(0.002)
            conn.send(b"0\r\n\r\n")
        elif pattern == "data-then-next-size":  # every segment ends right after a chunk-size line
            conn.send(b"3e8\r\n")
            for _ in range(n - 1):
                time.sleep(0.002)
                conn.send(piece + b"\r\n3e8\r\n")
            conn.send(piece + b"\r\n0\r\n\r\n")
        else:
            for _ in range(n):
                for b in b"3e8\r\n":
                    conn.send(bytes([b]))
                conn.send(piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json() == {"length": n * 1000, "sha256": hashlib.sha256(piece * n).hexdigest()}
