"""Routing (host, path, regex, methods, headers, file order, 404) and the route filters
(rewrite, headers, redirect, respond), seen from a client and from the upstream.

Routes tag what they forward with `X-Route: <route name>` (a headers filter), see harness.main_config.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest
from harness import Proxy

pytestmark = pytest.mark.integration


def _route_of(r: httpx.Response) -> str | None:
    assert r.status_code == 200, (r.status_code, r.text)
    values = [v for k, v in r.json()["headers"] if k.lower() == "x-route"]
    assert len(values) <= 1
    return values[0] if values else None


def _doc(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    doc: dict[str, Any] = r.json()
    return doc


# ------------------------------------------------------------------ host

@pytest.mark.parametrize(
    ("host", "route"),
    [
        ("exact.test", "host-exact"),
        ("EXACT.TEST", "host-exact"),  # host names are case-insensitive
        ("exact.test:9999", "host-exact"),  # the port is not part of the match
        ("a.wild.test", "host-wild"),
        ("deep.a.wild.test", "host-wild"),
        ("wild.test", None),  # the apex is not matched by *.wild.test
        ("notexact.test", None),
        ("exact.test.evil", None),
        ("xwild.test", None),
    ],
)
def test_host_match(client: httpx.Client, host: str, route: str | None) -> None:
    assert _route_of(client.get("/echo", headers={"Host": host})) == route


# ------------------------------------------------------------------ path

@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/echo/exact", "path-exact"),
        ("/echo/exact/", None),  # exact means exact
        ("/echo/exactly", None),
        ("/echo/exact?q=1", "path-exact"),  # the query is not part of the path
        ("/echo/re/123", "path-regex"),
        ("/echo/re/12a", None),
        ("/echo/re/", None),
        ("/echo/anything", None),  # the catch-all backend route
    ],
)
def test_path_match(client: httpx.Client, path: str, route: str | None) -> None:
    assert _route_of(client.get(path)) == route


def test_no_route_is_404(client: httpx.Client) -> None:
    r = client.get("/nothing/here")
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["status"] == 404


# ------------------------------------------------------------------ methods and headers

def test_methods_match(client: httpx.Client) -> None:
    assert _route_of(client.post("/echo/methods", content=b"x")) == "methods"
    assert _route_of(client.put("/echo/methods", content=b"x")) == "methods"  # config says "post", "PUT"
    assert _route_of(client.get("/echo/methods")) is None  # falls through to the backend route


def test_method_mismatch_with_no_other_route_is_404(client: httpx.Client) -> None:
    assert client.get("/only-post/echo").status_code == 404
    r = client.post("/only-post/echo", content=b"abc")
    assert _route_of(r) == "only-post"
    assert r.json()["target"] == "/echo"


@pytest.mark.parametrize(
    ("headers", "route"),
    [
        ({"X-Env": "canary"}, "hdr-exact"),
        ({"X-Env": "Canary"}, None),  # values match exactly
        ({"X-Env": "prod"}, None),
        ({"X-Flag": ""}, "hdr-present"),  # "*": present, whatever the value
        ({"X-Flag": "1", "X-Env": "canary"}, "hdr-exact"),  # first match wins
        ({"x-env": "canary"}, "hdr-exact"),  # names are case-insensitive
        ({}, None),
    ],
)
def test_header_match(client: httpx.Client, headers: dict[str, str], route: str | None) -> None:
    assert _route_of(client.get("/echo/hdr", headers=headers)) == route


def test_first_matching_route_in_file_order_wins(client: httpx.Client) -> None:
    # order-second (exact path /echo/order/specific) comes after order-first (prefix /echo/order)
    assert _route_of(client.get("/echo/order/specific")) == "order-first"
    assert _route_of(client.get("/echo/order")) == "order-first"
    # host-exact is listed before the path routes: it wins for its host whatever the path
    assert _route_of(client.get("/echo/exact", headers={"Host": "exact.test"})) == "host-exact"


# ------------------------------------------------------------------ rewrite

def test_rewrite_strip_prefix(client: httpx.Client) -> None:
    assert _doc(client.get("/strip/echo/deep?q=1&r=2"))["target"] == "/echo/deep?q=1&r=2"
    assert _doc(client.get("/strip/echo"))["target"] == "/echo"


def test_rewrite_regex_replace(client: httpx.Client) -> None:
    assert _doc(client.get("/rx/first/second"))["target"] == "/echo/second/first"
    assert _doc(client.get("/rx/first/second?keep=1"))["target"] == "/echo/second/first?keep=1"


def test_rewrite_regex_without_match_keeps_path(client: httpx.Client) -> None:
    r = client.get("/rx/only-one-segment")
    assert r.status_code == 404  # the upstream got /rx/only-one-segment, which it does not serve
    assert r.text == "no such endpoint\n"


# ------------------------------------------------------------------ headers filter

def test_headers_filter_request_side(client: httpx.Client) -> None:
    r = client.get(
        "/hdrs/echo",
        headers=[("X-Remove-Me", "1"), ("X-Overwrite", "old"), ("X-Overwrite", "older"), ("X-Add", "one")],
    )
    headers = r.json()["headers"]

    def values(name: str) -> list[str]:
        return [v for k, v in headers if k.lower() == name.lower()]

    assert values("X-Remove-Me") == []
    assert values("X-Set") == ["one"]
    assert values("X-Overwrite") == ["new"]  # set replaces every value
    assert values("X-Add") == ["one", "two"]  # add keeps the client's


def test_headers_filter_response_side(client: httpx.Client) -> None:
    r = client.get("/hdrs/echo")
    assert r.headers["X-Resp-Set"] == "yes"
    assert r.headers["X-Resp-Add"] == "a"
    assert "X-Upstream" not in r.headers  # removed; the same upstream sends it on other routes:
    assert "X-Upstream" in client.get("/echo").headers


# ------------------------------------------------------------------ redirect and respond

def test_redirect_with_path(client: httpx.Client) -> None:
    r = client.get("/old/some/page?x=1")
    assert r.status_code == 301
    assert r.headers["Location"] == "https://new.example/new/old/some/page"
    assert r.content == b""


def test_redirect_with_query_and_default_status(client: httpx.Client) -> None:
    r = client.get("/goto?a=1&b=2")
    assert r.status_code == 302
    assert r.headers["Location"] == "/target?from=a=1&b=2"


def test_redirect_never_reaches_upstream(client: httpx.Client, upstream: Any) -> None:
    before = upstream.stats()
    client.get("/old/x")
    assert upstream.stats()["requests"] == before["requests"]


def test_respond_fixed_body(client: httpx.Client) -> None:
    r = client.get("/fixed")
    assert r.status_code == 200
    assert r.content == b"fixed body\n"
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Content-Length"] == "11"
    assert r.headers["X-Fixed"] == "yes"
    teapot = client.post("/teapot", content=b"ignored body")
    assert (teapot.status_code, teapot.content) == (418, b"short and stout")
    assert teapot.headers["Content-Type"] == "text/x-teapot"


def test_an_early_answer_reaches_a_client_still_sending_its_body(proxy: Proxy) -> None:
    """The route answers before the body has come; the connection is then closed, but more
    body bytes keep arriving. Closed at once, the kernel would answer them with a reset that
    can wipe the answer before the client reads it; lingering, the answer ends with a FIN."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /teapot HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.3)  # the answer is sent and the connection closed meanwhile
        for _ in range(8):
            sock.sendall(b"y" * 16384)  # more of the body, to a socket the proxy closed
        time.sleep(0.1)
        data = b""
        while True:
            piece = sock.recv(65536)  # ConnectionResetError here: the answer was lost
            if not piece:
                break
            data += piece
    assert data.startswith(b"HTTP/1.1 418 ") and data.endswith(b"short and stout")
    assert b"connection: close" in data.lower()


def test_respond_to_head_has_no_body(client: httpx.Client) -> None:
    r = client.head("/fixed")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == "11"
    assert r.content == b""


def test_respond_keeps_the_connection_alive(proxy: Any) -> None:
    from harness import RawConnection

    with RawConnection(proxy.port) as conn:
        for _ in range(3):
            conn.send(b"GET /fixed HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.read_response().body == b"fixed body\n"


def test_respond_before_the_request_body_never_desyncs(proxy: Any) -> None:
    """The route answers without reading the body: the proxy must either read past the body or
    close; the body bytes must never be read as the next request."""
    from harness import RawConnection

    with RawConnection(proxy.port) as conn:
        conn.send(b"POST /fixed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 41\r\n\r\n")
        first = conn.read_response()
        assert first.body == b"fixed body\n"
        try:
            conn.send(b"GET /teapot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # 41 bytes: the body
            conn.send(b"GET /fixed HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        if first.header("Connection") == "close":
            assert conn.wait_closed() == b""
        else:
            assert conn.read_response().body == b"fixed body\n"  # not the teapot
