"""Keep-alive on both sides and pipelining, counted at a fresh upstream of this module's own."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import Proxy, RawConnection, Upstream, base_config, pattern_chunks

pytestmark = pytest.mark.integration

HOST = b"Host: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def ka_upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("ka")


@pytest.fixture(scope="module")
def ka_proxy(make_proxy: Callable[[dict[str, Any]], Proxy], ka_upstream: Upstream) -> Proxy:
    return make_proxy(base_config(ka_upstream))


def test_sequential_requests_reuse_one_upstream_connection(ka_proxy: Proxy, ka_upstream: Upstream) -> None:
    before = ka_upstream.stats()
    with httpx.Client(base_url=ka_proxy.url, timeout=10) as client:
        for i in range(60):
            if i % 3 == 0:
                r = client.post("/upload", content=b"x" * i)
                assert r.json()["length"] == i
            elif i % 3 == 1:
                r = client.get(f"/echo?i={i}")
                assert r.json()["target"] == f"/echo?i={i}"
            else:
                r = client.get("/chunked/1000")
                assert r.content == b"".join(pattern_chunks(1000))
            assert r.status_code == 200
    after = ka_upstream.stats()
    assert after["requests"] - before["requests"] == 60
    # a fresh upstream: the first request opens the one connection, the other 59 reuse it
    assert after["connections"] - before["connections"] <= 1
    assert after["connections"] == 1


def test_one_client_connection_serves_many_requests(ka_proxy: Proxy, ka_upstream: Upstream) -> None:
    httpx.get(ka_proxy.url + "/echo", timeout=10)  # a warm upstream connection in the pool
    before = ka_upstream.stats()
    with RawConnection(ka_proxy.port) as conn:
        for i in range(30):
            conn.send(b"GET /echo?n=%d HTTP/1.1\r\n" % i + HOST + b"\r\n")
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.header("Connection") is None
            assert resp.json()["target"] == f"/echo?n={i}"
        assert conn.is_open()
    after = ka_upstream.stats()
    assert after["requests"] - before["requests"] == 30
    assert after["connections"] - before["connections"] == 0  # all on the pooled connection


def test_pipelined_requests_are_answered_in_order(ka_proxy: Proxy) -> None:
    body = b"pipelined body"
    requests = [
        b"GET /echo?p=0 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET /size/1000 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"HEAD /size/50 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % len(body) + body,
        b"GET /chunked/3000 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"POST /upload HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /status/204 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET /echo?p=7 HTTP/1.1\r\n" + HOST + b"\r\n",
    ]
    with RawConnection(ka_proxy.port) as conn:
        conn.send(b"".join(requests))  # all at once, in one segment
        r = [conn.read_response("HEAD" if i == 2 else "GET") for i in range(len(requests))]
        assert [x.status for x in r] == [200, 200, 200, 200, 200, 200, 204, 200]
        assert r[0].json()["target"] == "/echo?p=0"
        assert r[1].body == b"".join(pattern_chunks(1000))
        assert r[2].header("Content-Length") == "50" and r[2].body == b""
        assert r[3].json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert r[4].body == b"".join(pattern_chunks(3000))
        assert r[5].json()["length"] == 3
        assert r[7].json()["target"] == "/echo?p=7"
        assert conn.buf == b""
        assert conn.is_open()


def test_pipelined_slow_first_response_keeps_order(ka_proxy: Proxy) -> None:
    with RawConnection(ka_proxy.port) as conn:
        conn.send(
            b"GET /slow-head/0.5 HTTP/1.1\r\n" + HOST + b"\r\n"
            + b"GET /echo?second HTTP/1.1\r\n" + HOST + b"\r\n"
        )  # fmt: skip
        first = conn.read_response()
        second = conn.read_response()
        assert first.body == b"slow head\n"
        assert second.json()["target"] == "/echo?second"


def test_pipelined_requests_sent_byte_by_byte(ka_proxy: Proxy) -> None:
    data = (b"GET /echo?a HTTP/1.1\r\n" + HOST + b"\r\n") + (b"GET /echo?b HTTP/1.1\r\n" + HOST + b"\r\n")
    with RawConnection(ka_proxy.port) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            conn.send(data[i : i + 1])
        assert conn.read_response().json()["target"] == "/echo?a"
        assert conn.read_response().json()["target"] == "/echo?b"


def test_client_connection_close_is_honoured(ka_proxy: Proxy) -> None:
    with RawConnection(ka_proxy.port) as conn:
        conn.send(b"GET /echo HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Connection") == "close"
        assert conn.wait_closed() == b""


def test_http10_keep_alive_is_honoured(ka_proxy: Proxy) -> None:
    with RawConnection(ka_proxy.port) as conn:
        for _ in range(3):
            conn.send(b"GET /size/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.header("Connection") == "keep-alive"
            assert resp.body == bytes(range(10))
        assert conn.is_open()


def test_upstream_closing_its_connection_does_not_close_the_clients(ka_proxy: Proxy, ka_upstream: Upstream) -> None:
    before = ka_upstream.stats()
    with RawConnection(ka_proxy.port) as conn:
        conn.send(b"GET /close HTTP/1.1\r\n" + HOST + b"\r\n")
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, b"closing\n")
        assert resp.header("Connection") is None  # the peer's close is hop-by-hop
        conn.send(b"GET /echo?after-close HTTP/1.1\r\n" + HOST + b"\r\n")
        resp = conn.read_response()
        assert resp.json()["target"] == "/echo?after-close"
    after = ka_upstream.stats()
    # the closed connection is not reused: the next request needed a new one
    assert after["connections"] - before["connections"] == 1


def test_concurrent_clients_each_get_their_own_answers(ka_proxy: Proxy) -> None:
    import concurrent.futures

    def worker(n: int) -> None:
        with httpx.Client(base_url=ka_proxy.url, timeout=10) as client:
            for i in range(10):
                body = f"{n}-{i}".encode() * 100
                r = client.post(f"/echo?w={n}&i={i}", content=body)
                doc = r.json()
                assert doc["target"] == f"/echo?w={n}&i={i}"
                assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(worker, n) for n in range(8)]:
            f.result(timeout=30)
