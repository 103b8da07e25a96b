"""Errors the proxy generates: the right status for each upstream failure, and a small body,
JSON by default and HTML when the client asks for it, that carries the request id."""

from __future__ import annotations

import json

import httpx
import pytest
from harness import ConnectionClosed, Proxy, RawConnection, Upstream

pytestmark = pytest.mark.integration

H = b"Host: 127.0.0.1\r\n"


def _check_json_error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert len(r.content) < 1024
    assert r.headers["Content-Length"] == str(len(r.content))
    doc: dict[str, object] = r.json()
    assert doc["status"] == status
    assert isinstance(doc["error"], str) and doc["error"]
    assert isinstance(doc["message"], str)
    assert doc["request_id"] == r.headers["X-Request-Id"]
    return doc


def test_connect_refused_is_502_json(client: httpx.Client) -> None:
    _check_json_error(client.get("/dead/x"), 502)


def test_upstream_reset_is_502(client: httpx.Client) -> None:
    _check_json_error(client.get("/reset"), 502)


def test_upstream_garbage_is_502(client: httpx.Client) -> None:
    _check_json_error(client.get("/garbage"), 502)


def test_no_route_is_404_json(client: httpx.Client) -> None:
    _check_json_error(client.get("/nothing"), 404)


@pytest.mark.parametrize("path", ["/dead/x", "/nothing", "/reset"])
def test_error_is_html_when_asked(client: httpx.Client, path: str) -> None:
    r = client.get(path, headers={"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"})
    assert r.headers["Content-Type"].startswith("text/html")
    rid = r.headers["X-Request-Id"]
    assert rid in r.text
    assert str(r.status_code) in r.text
    assert r.text.lstrip().lower().startswith("<!doctype html>")
    assert len(r.content) < 2048


def test_error_is_json_when_json_is_acceptable(client: httpx.Client) -> None:
    r = client.get("/nothing", headers={"Accept": "application/json, text/html"})
    _check_json_error(r, 404)


def test_error_carries_the_clients_request_id(client: httpx.Client) -> None:
    r = client.get("/dead/x", headers={"X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    assert r.json()["request_id"] == "trace-42"


def test_error_in_html_escapes_what_the_client_sent(client: httpx.Client) -> None:
    r = client.get("/nothing/<script>", headers={"Accept": "text/html"})
    assert r.status_code == 404
    assert "<script>" not in r.text


def test_parse_error_page_follows_accept(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /echo HTTP/1.1\r\nAccept: text/html\r\nX-Bad: a\x01b\r\n" + H + b"\r\n")
        resp = conn.read_response()
    assert resp.status == 400
    assert resp.header("Content-Type").startswith("text/html")  # type: ignore[union-attr]
    assert resp.header("X-Request-Id").encode() in resp.body  # type: ignore[union-attr]


def test_error_to_head_has_no_body(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(b"HEAD /dead/x HTTP/1.1\r\n" + H + b"\r\n")
        resp = conn.read_response("HEAD")
        assert resp.status == 502
        conn.send(b"GET /size/3 HTTP/1.1\r\n" + H + b"\r\n")  # no stray body bytes in between
        nxt = conn.read_response()
        assert (nxt.status, nxt.body) == (200, b"\x00\x01\x02")


def test_client_connection_survives_upstream_errors(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        for path in (b"/dead/x", b"/reset", b"/garbage", b"/nothing"):
            conn.send(b"GET " + path + b" HTTP/1.1\r\n" + H + b"\r\n")
            assert conn.read_response().status in (404, 502)
        conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
        assert conn.read_response().status == 200


def test_upstream_truncating_its_body_truncates_the_clients(proxy: Proxy) -> None:
    """The peer promised 100 bytes and closed after 10: the client must not get a complete-looking
    response; the proxy closes the connection after the 10 bytes."""
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET /truncate HTTP/1.1\r\n" + H + b"\r\n")
        with pytest.raises(ConnectionClosed) as info:
            conn.read_response()
    assert info.value.args[0] == b"0123456789"


def test_upstream_error_statuses_are_not_replaced(client: httpx.Client) -> None:
    """A 502 or 500 from the peer is the peer's, body and all, not an error page of ours."""
    r = client.get("/status/502")
    assert r.status_code == 502
    assert r.text == "status 502\n"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_no_request_reached_upstream_for_refused_ones(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()
    with httpx.Client(base_url=proxy.url) as c:
        c.get("/nothing")
        c.get("/dead/x")
        c.get("/fixed")
    assert upstream.stats()["requests"] == before["requests"]
