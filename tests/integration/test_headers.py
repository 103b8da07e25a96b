"""Header rules on the way through: hop-by-hop fields, X-Forwarded-* / Forwarded (trusted or not), X-Request-Id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import Proxy, RawConnection, Upstream, base_config, raw_request

pytestmark = pytest.mark.integration

H = b"Host: 127.0.0.1\r\n"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


@pytest.fixture(scope="module")
def trusted_proxy(make_proxy: Callable[[dict[str, Any]], Proxy], upstream: Upstream) -> Proxy:
    """The same proxy, with 127.0.0.1/32 (the test client) as a trusted proxy."""
    return make_proxy(base_config(upstream, trusted_proxies=["127.0.0.1/32"]))


def _echo(port: int, extra: bytes, target: bytes = b"/echo") -> dict[str, Any]:
    resp, _ = raw_request(port, b"GET " + target + b" HTTP/1.1\r\n" + H + extra + b"Connection: close\r\n\r\n")
    assert resp.status == 200, resp
    doc: dict[str, Any] = resp.json()
    return doc


def _values(doc: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def _names(doc: dict[str, Any]) -> set[str]:
    return {k.lower() for k, _ in doc["headers"]}


# ------------------------------------------------------------------ hop-by-hop

def test_hop_by_hop_request_fields_are_not_forwarded(proxy: Proxy) -> None:
    with RawConnection(proxy.port) as conn:
        conn.send(
            b"GET /echo HTTP/1.1\r\n" + H
            + b"Connection: keep-alive, X-Hop-A\r\n"
            + b"X-Hop-A: named by Connection\r\n"
            + b"Keep-Alive: timeout=5\r\n"
            + b"Proxy-Connection: keep-alive\r\n"
            + b"TE: trailers\r\n"
            + b"Trailer: X-Checksum\r\n"
            + b"Upgrade: foo/1\r\n"  # not an upgrade request: Connection does not name it
            + b"X-Keep: end-to-end\r\n\r\n"
        )  # fmt: skip
        resp = conn.read_response()
        assert resp.status == 200
        doc = resp.json()
        names = _names(doc)
        assert not names & (HOP_BY_HOP | {"x-hop-a"}), sorted(names)
        assert _values(doc, "X-Keep") == ["end-to-end"]
        assert conn.is_open()  # and the client's own keep-alive still works


def test_fields_named_by_a_second_connection_line_are_not_forwarded(proxy: Proxy) -> None:
    doc = _echo(proxy.port, b"Connection: keep-alive\r\nConnection: X-Hop-B\r\nX-Hop-B: 2\r\nX-Keep: 1\r\n")
    assert "x-hop-b" not in _names(doc)
    assert _values(doc, "X-Keep") == ["1"]


def test_connection_tokens_are_case_insensitive(proxy: Proxy) -> None:
    doc = _echo(proxy.port, b"Connection: x-hop-c\r\nX-HOP-C: 3\r\n")
    assert "x-hop-c" not in _names(doc)


def test_hop_by_hop_response_fields_are_not_forwarded(proxy: Proxy) -> None:
    target = (
        b"/rheaders?Connection=X-Resp-Hop&X-Resp-Hop=1&Keep-Alive=timeout%3D5&Proxy-Connection=x&Upgrade=foo"
        b"&X-Fine=1"
    )
    with RawConnection(proxy.port) as conn:
        conn.send(b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        names = {k.lower() for k, _ in resp.headers}
        assert not names & {"x-resp-hop", "keep-alive", "proxy-connection", "upgrade"}, sorted(names)
        assert resp.header("Connection") is None
        assert resp.header("X-Fine") == "1"
        conn.send(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")  # the peer's Connection did not close ours
        assert conn.read_response().status == 200


# ------------------------------------------------------------------ X-Forwarded-* and Forwarded

def test_forwarding_fields_are_set(client: httpx.Client) -> None:
    doc = client.get("/echo").json()
    assert _values(doc, "X-Forwarded-For") == ["127.0.0.1"]
    assert _values(doc, "X-Forwarded-Proto") == ["http"]
    assert _values(doc, "X-Forwarded-Host") == [client.base_url.netloc.decode()]
    assert _values(doc, "Forwarded") == [f'for=127.0.0.1;proto=http;host="{client.base_url.netloc.decode()}"']


SPOOF = (
    b"X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6;proto=https\r\n"
)


def test_untrusted_client_forwarding_fields_are_replaced(proxy: Proxy) -> None:
    doc = _echo(proxy.port, SPOOF)
    assert _values(doc, "X-Forwarded-For") == ["127.0.0.1"]
    assert _values(doc, "X-Forwarded-Proto") == ["http"]
    assert _values(doc, "X-Forwarded-Host") == ["127.0.0.1"]
    assert _values(doc, "Forwarded") == ['for=127.0.0.1;proto=http;host="127.0.0.1"']
    assert "6.6.6.6" not in str(doc["headers"]) and "evil.test" not in str(doc["headers"])


def test_trusted_client_forwarding_fields_are_appended_to(trusted_proxy: Proxy) -> None:
    doc = _echo(trusted_proxy.port, SPOOF)
    assert _values(doc, "X-Forwarded-For") == ["6.6.6.6, 7.7.7.7, 127.0.0.1"]
    assert _values(doc, "X-Forwarded-Proto") == ["https"]
    assert _values(doc, "X-Forwarded-Host") == ["evil.test"]
    assert _values(doc, "Forwarded") == ['for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host="127.0.0.1"']


def test_trusted_client_without_forwarding_fields(trusted_proxy: Proxy) -> None:
    doc = _echo(trusted_proxy.port, b"")
    assert _values(doc, "X-Forwarded-For") == ["127.0.0.1"]
    assert _values(doc, "X-Forwarded-Proto") == ["http"]


# ------------------------------------------------------------------ X-Request-Id

def test_request_id_is_generated_and_shared(client: httpx.Client) -> None:
    r1 = client.get("/echo")
    r2 = client.get("/echo")
    rid1, rid2 = r1.headers["X-Request-Id"], r2.headers["X-Request-Id"]
    assert rid1 and rid2 and rid1 != rid2
    assert _values(r1.json(), "X-Request-Id") == [rid1]
    assert _values(r2.json(), "X-Request-Id") == [rid2]


def test_request_id_from_the_client_is_passed_through(client: httpx.Client) -> None:
    r = client.get("/echo", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    assert _values(r.json(), "X-Request-Id") == ["abc-123"]


def test_request_id_on_answers_the_proxy_makes_itself(client: httpx.Client) -> None:
    fixed = client.get("/fixed", headers={"X-Request-Id": "fixed-1"})
    assert fixed.headers["X-Request-Id"] == "fixed-1"
    moved = client.get("/old/x")
    assert moved.status_code == 301 and moved.headers["X-Request-Id"]


def test_a_response_id_set_by_the_upstream_is_not_duplicated(client: httpx.Client) -> None:
    r = client.get("/rheaders?X-Request-Id=from-upstream")
    assert len(r.headers.get_list("X-Request-Id")) == 1


# ------------------------------------------------------------------ Host

def test_absolute_form_target_host_is_the_host_the_upstream_sees(proxy: Proxy) -> None:
    """RFC 9112 3.2.2: with an absolute-form target the Host field is ignored; the proxy routes on
    the target's host, so the peer must be told that same host, not the ignored Host field."""
    resp, _ = raw_request(
        proxy.port, b"GET http://exact.test/echo HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 200
    doc = resp.json()
    assert _values(doc, "X-Route") == ["host-exact"]
    assert _values(doc, "Host") == ["exact.test"]
    assert _values(doc, "X-Forwarded-Host") == ["exact.test"]


def test_host_with_port_and_case_routes_on_the_name_and_is_passed_as_sent(proxy: Proxy) -> None:
    resp, _ = raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: EXACT.test:8080\r\nConnection: close\r\n\r\n")
    assert _values(resp.json(), "X-Route") == ["host-exact"]
    assert _values(resp.json(), "Host") == ["EXACT.test:8080"]


def test_http10_request_without_host_gets_one_upstream(proxy: Proxy) -> None:
    """HTTP/1.0 allows no Host; the HTTP/1.1 request the proxy sends its peer must carry exactly one."""
    resp, _ = raw_request(proxy.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    assert len(_values(resp.json(), "Host")) == 1
