"""One error type for every failure, and the one table that maps it to a status."""

from __future__ import annotations

import enum
import json
from html import escape
from http import HTTPStatus
from typing import Final


class Source(enum.Enum):
    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ErrorKind(enum.Enum):
    # downstream (the client's fault)
    BAD_REQUEST = "bad_request"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TOO_LARGE = "body_too_large"
    CLIENT_TIMEOUT = "client_timeout"
    VERSION_NOT_SUPPORTED = "version_not_supported"
    NO_ROUTE = "no_route"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CLIENT_CLOSED = "client_closed"
    # upstream
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    UPSTREAM_RESET = "upstream_reset"
    UPSTREAM_REFUSED = "upstream_refused"
    """An HTTP/2 peer refused a stream it never processed (REFUSED_STREAM, or above its GOAWAY's last
    stream): safe to send again whatever the method."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_PROTOCOL = "upstream_protocol"
    UPSTREAM_STATUS = "upstream_status"
    NO_HEALTHY_PEER = "no_healthy_peer"
    # ours
    INTERNAL = "internal"
    REFUSED = "refused"


_TABLE: Final[dict[ErrorKind, tuple[int, Source, bool]]] = {
    # kind: (status, source, retryable)
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
    ErrorKind.REFUSED: (403, Source.INTERNAL, False),  # a filter refused the peer's response (Refuse)
}


class ProxyError(Exception):
    """A failure on the way through the proxy, answered with `status`."""

    __slots__ = ("detail", "kind", "retryable", "source", "status")

    def __init__(self, kind: ErrorKind, detail: str = "") -> None:
        super().__init__(detail or kind.value)
        self.kind = kind
        self.detail = detail
        self.status, self.source, self.retryable = _TABLE[kind]


def reason_phrase(status: int) -> str:
    if status == 499:
        return "Client Closed Request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_error(status: int, message: str, request_id: str, accept: bytes | None) -> tuple[bytes, bytes]:
    """A small error body as JSON or HTML, by the client's Accept: (content type, body)."""
    if accept is not None and b"html" in accept and b"json" not in accept:
        title = f"{status} {escape(reason_phrase(status))}"
        body = (
            f"<!doctype html><html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{escape(message)}</p><p>request id: {escape(request_id)}</p>"
            "</body></html>\n"
        )
        return b"text/html; charset=utf-8", body.encode()
    doc = {"status": status, "error": reason_phrase(status), "message": message, "request_id": request_id}
    return b"application/json", (json.dumps(doc) + "\n").encode()
