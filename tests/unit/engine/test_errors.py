"""The error table and the error pages."""

from __future__ import annotations

import json

import pytest

from portcullis.engine.errors import ErrorKind, ProxyError, Source, reason_phrase, render_error

EXPECTED = {
    ErrorKind.BAD_REQUEST: (400, Source.DOWNSTREAM, False),
    ErrorKind.URI_TOO_LONG: (414, Source.DOWNSTREAM, False),
    ErrorKind.HEADERS_TOO_LARGE: (431, Source.DOWNSTREAM, False),
    ErrorKind.BODY_TOO_LARGE: (413, Source.DOWNSTREAM, False),
    ErrorKind.CLIENT_TIMEOUT: (408, Source.DOWNSTREAM, False),
    ErrorKind.VERSION_NOT_SUPPORTED: (505, Source.DOWNSTREAM, False),
    ErrorKind.NO_ROUTE: (404, Source.DOWNSTREAM, False),
    ErrorKind.METHOD_NOT_ALLOWED: (405, Source.DOWNSTREAM, False),
    ErrorKind.CLIENT_CLOSED: (499, Source.DOWNSTREAM, False),
    ErrorKind.CONNECT_FAILED: (502, Source.UPSTREAM, True),
    ErrorKind.CONNECT_TIMEOUT: (502, Source.UPSTREAM, True),
    ErrorKind.UPSTREAM_RESET: (502, Source.UPSTREAM, True),
    ErrorKind.UPSTREAM_REFUSED: (502, Source.UPSTREAM, True),
    ErrorKind.UPSTREAM_TIMEOUT: (504, Source.UPSTREAM, False),
    ErrorKind.UPSTREAM_PROTOCOL: (502, Source.UPSTREAM, False),
    ErrorKind.UPSTREAM_STATUS: (502, Source.UPSTREAM, True),
    ErrorKind.NO_HEALTHY_PEER: (503, Source.UPSTREAM, False),
    ErrorKind.INTERNAL: (500, Source.INTERNAL, False),
    ErrorKind.REFUSED: (403, Source.INTERNAL, False),
}


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.value)
def test_status_table(kind: ErrorKind) -> None:
    err = ProxyError(kind, "detail")
    assert (err.status, err.source, err.retryable) == EXPECTED[kind]
    assert err.kind is kind
    assert err.detail == "detail"


def test_every_kind_is_in_the_table() -> None:
    assert set(ErrorKind) == set(EXPECTED)


def test_message_defaults_to_the_kind() -> None:
    assert str(ProxyError(ErrorKind.NO_ROUTE)) == "no_route"
    assert str(ProxyError(ErrorKind.NO_ROUTE, "no route for GET /x")) == "no route for GET /x"


def test_proxy_error_is_an_exception() -> None:
    with pytest.raises(ProxyError) as info:
        raise ProxyError(ErrorKind.UPSTREAM_TIMEOUT)
    assert info.value.status == 504


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(404, "Not Found"), (502, "Bad Gateway"), (431, "Request Header Fields Too Large"),
     (499, "Client Closed Request"), (299, "Unknown"), (999, "Unknown")],
)  # fmt: skip
def test_reason_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


@pytest.mark.parametrize(
    "accept",
    [None, b"*/*", b"application/json", b"text/html, application/json", b"application/json;q=1, text/html;q=0.1",
     b"text/plain"],
)  # fmt: skip
def test_render_error_json(accept: bytes | None) -> None:
    ctype, body = render_error(502, "upstream refused the connection", "req-123", accept)
    assert ctype == b"application/json"
    assert body.endswith(b"\n")
    doc = json.loads(body)
    assert doc == {
        "status": 502,
        "error": "Bad Gateway",
        "message": "upstream refused the connection",
        "request_id": "req-123",
    }


@pytest.mark.parametrize("accept", [b"text/html", b"text/html,application/xhtml+xml,*/*;q=0.8"])
def test_render_error_html(accept: bytes) -> None:
    ctype, body = render_error(404, "no route", "rid-42", accept)
    assert ctype == b"text/html; charset=utf-8"
    text = body.decode()
    assert text.startswith("<!doctype html>")
    assert "<title>404 Not Found</title>" in text
    assert "<h1>404 Not Found</h1>" in text
    assert "no route" in text
    assert "rid-42" in text


def test_render_error_html_escapes() -> None:
    _, body = render_error(400, "<script>alert(1)</script>", '"><img src=x>', b"text/html")
    text = body.decode()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "<img" not in text


def test_render_error_json_escapes() -> None:
    _, body = render_error(400, 'quote " and \n newline', "id\u2028", None)
    doc = json.loads(body)
    assert doc["message"] == 'quote " and \n newline'
    assert doc["request_id"] == "id\u2028"
    assert body.count(b"\n") == 1  # one line
