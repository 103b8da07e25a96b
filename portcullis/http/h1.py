"""A strict, sans-IO HTTP/1.1 request reader (RFC 9112) on top of httptools.

`feed()` bytes in; the request events come out through three methods a subclass overrides.
httptools (llhttp) already refuses most smuggling vectors: Content-Length with
Transfer-Encoding, duplicate or malformed Content-Length, obs-fold, bare CR, control
characters, whitespace before the colon and bad chunk sizes. This layer adds what it lets
through: a Transfer-Encoding other than a lone `chunked`, a missing or repeated Host, unknown
versions, and the size limits. Every refusal is a `ProxyError` with the right status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import httptools
from mypy_extensions import mypyc_attr

from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.messages import Headers
from portcullis.http.hosts import checked_host_name, checked_names

_SPECIAL: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"connection"}
)
_METHOD_NAMES: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


@dataclass(frozen=True, slots=True)
class H1Settings:
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    request_id_header: bytes = b"x-request-id"
    """Lower-case name of the request id header, captured while parsing."""


class RequestHead:
    """A parsed, validated request head."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "has_body",
        "headers",
        "host",
        "host_name",
        "keep_alive",
        "method",
        "request_id",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: Headers,
        host: bytes | None,
        host_name: str | None,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        upgrade: bytes | None,
        keep_alive: bool,
        connection: bytes | None,
        request_id: bytes | None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.host_name = host_name
        """The lower-case host of a non-empty `host`, without its port."""
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self.connection = connection
        """The Connection header (all its fields joined), for hop-by-hop removal."""
        self.request_id = request_id
        self.has_body = chunked or bool(content_length)


class UpgradeRequested(Exception):
    """The request asked to switch protocols; the bytes after its head are not HTTP/1.1 any more."""

    def __init__(self, leftover: bytes) -> None:
        super().__init__("upgrade")
        self.leftover = leftover


class _Stop(Exception):
    """Raised by `stop_parsing` to abandon the rest of the bytes being fed."""


@mypyc_attr(allow_interpreted_subclasses=True)  # a base to build on (compiled or not)
class H1RequestReader:
    """Feed bytes with `feed`; override `request_head`, `request_body`, `request_end`."""

    __slots__ = (
        "_chunked",
        "_connection",
        "_content_length",
        "_expect",
        "_feed_body",
        "_head_bytes",
        "_header_bytes",
        "_headers",
        "_host",
        "_host_count",
        "_in_trailers",
        "_limits",
        "_parser",
        "_request_id",
        "_rid_name",
        "_stopped",
        "_trailers",
        "_upgrade",
        "_url",
        "in_head",
    )

    def __init__(self, limits: H1Settings) -> None:
        self._limits = limits
        self._rid_name = limits.request_id_header
        self._parser: Any = httptools.HttpRequestParser(self)  # None once released
        self._stopped = False
        self.in_head = False
        """A request head has begun and is not complete yet."""
        self._head_bytes = 0
        self._feed_body = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._host: bytes | None = None
        self._host_count = 0
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None
        self._connection: bytes | None = None
        self._request_id: bytes | None = None
        self._trailers: Headers | None = None
        self._in_trailers = False

    # ------------------------------------------------------------------ events, for subclasses
    def request_head(self, head: RequestHead) -> None:
        raise NotImplementedError

    def request_body(self, chunk: bytes) -> None:
        raise NotImplementedError

    def request_end(self, trailers: Headers | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes) -> None:
        """Parse `data`. Raises ProxyError for malformed or oversized input (the connection must
        then be answered and closed), UpgradeRequested after an upgrade request's head."""
        if self._stopped:
            return
        # bytes of an unfinished head (or trailer section) are buffered inside the parser: count
        # them only for feeds that start inside one, so a body before a new head is never counted
        counting = self.in_head or self._in_trailers
        if not counting:
            self._head_bytes = 0
        self._feed_body = False  # a feed that carried body bytes is not all head or trailers
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._stopped = True
            raise UpgradeRequested(data[upgrade.args[0] :]) from None
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stop):
                return
            self._stopped = True
            if isinstance(cause, ProxyError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            self._stopped = True
            raise ProxyError(ErrorKind.BAD_REQUEST, f"malformed request: {exc}") from None
        if counting and not self._feed_body and (self.in_head or self._in_trailers):
            self._head_bytes += len(data)
            limits = self._limits
            if self._head_bytes > limits.max_header_bytes + limits.max_request_line:
                # a request line this long would have been refused (414) by `on_url` already:
                # llhttp hands over the part of the target it has at the end of every feed
                self._stopped = True
                raise ProxyError(ErrorKind.HEADERS_TOO_LARGE, "request head too large")

    def stop_parsing(self) -> None:
        """Ignore every byte from now on (the connection is closing). Safe inside an event."""
        self._stopped = True

    def release_parser(self) -> None:
        """Drop the parser for good (the connection is gone). Not inside an event.

        The parser holds this object's callbacks and this object holds the parser: without this
        cycle broken, every closed connection would wait for the garbage collector to be freed."""
        self._stopped = True
        self._parser = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def partial_accept(self) -> bytes | None:
        """The Accept header of the head being read, for error pages."""
        for name, value in self._headers:
            if name.lower() == b"accept":
                return value
        return None

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        if self._stopped:
            raise _Stop()
        self.in_head = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise ProxyError(ErrorKind.URI_TOO_LONG, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            assert self._trailers is not None
            self._header_bytes += len(name) + len(value) + 4
            if self._header_bytes > self._limits.max_header_bytes:
                raise ProxyError(ErrorKind.HEADERS_TOO_LARGE, "request trailers too large")
            self._trailers.append((name, value))
            return
        headers = self._headers
        self._header_bytes += len(name) + len(value) + 4
        limits = self._limits
        if self._header_bytes > limits.max_header_bytes or len(headers) >= limits.max_headers:
            raise ProxyError(ErrorKind.HEADERS_TOO_LARGE, "request headers too large")
        headers.append((name, value))
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == b"host":
                self._host_count += 1
                self._host = value
            elif lname == b"content-length":
                self._content_length = int(value)
            elif lname == b"transfer-encoding":
                # RFC 9112 6.1: anything but a lone, final `chunked` is refused rather than guessed at
                if value.strip().lower() != b"chunked":
                    raise ProxyError(ErrorKind.BAD_REQUEST, "unsupported Transfer-Encoding")
                self._chunked = True
            elif lname == b"expect":
                self._expect = value.strip().lower() == b"100-continue"
            elif lname == b"connection":
                self._connection = value if self._connection is None else self._connection + b"," + value
            else:
                self._upgrade = value
        elif lname == self._rid_name:
            self._request_id = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ProxyError(ErrorKind.VERSION_NOT_SUPPORTED, f"HTTP/{version} is not supported here")
        if self._host_count > 1:
            raise ProxyError(ErrorKind.BAD_REQUEST, "repeated Host header")
        if self._host_count == 0 and version == "1.1":
            raise ProxyError(ErrorKind.BAD_REQUEST, "missing Host header")
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("latin-1")
        if method == "CONNECT":
            raise ProxyError(ErrorKind.METHOD_NOT_ALLOWED, "CONNECT is not supported")
        target = self._url
        host = self._host
        if not target.startswith(b"/"):
            if target[:8].lower().startswith((b"http://", b"https://")):
                # absolute form (RFC 9112 3.2.2): the target's authority wins over Host
                rest = target.partition(b"://")[2]
                end = len(rest)
                for stop in (b"/", b"?", b"#"):
                    at = rest.find(stop)
                    if at != -1 and at < end:
                        end = at
                host, target = rest[:end], rest[end:]
                if not host or b"@" in host:
                    raise ProxyError(ErrorKind.BAD_REQUEST, "invalid authority in the request target")
                if not target.startswith(b"/"):
                    target = b"/" + target
                # the Host field is ignored: the peer must see the host the request is routed on
                self._headers = [(n, v) for n, v in self._headers if n.lower() != b"host"]
                self._headers.append((b"Host", host))
            elif not (target == b"*" and method == "OPTIONS"):
                raise ProxyError(ErrorKind.BAD_REQUEST, "invalid request target")
        host_name = None
        if host:
            host_name = checked_names.get(host)  # (a dict lookup, not a call: the same few values repeat)
            if host_name is None:
                host_name = checked_host_name(host)
                if host_name is None:
                    raise ProxyError(ErrorKind.BAD_REQUEST, "invalid Host header")
        if self._chunked and version == "1.0":
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
            raise ProxyError(ErrorKind.BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
        self.in_head = False
        self.request_head(
            RequestHead(
                method,
                target,
                version,
                self._headers,
                host,
                host_name,
                self._content_length,
                self._chunked,
                self._expect,
                self._upgrade if parser.should_upgrade() else None,
                parser.should_keep_alive(),
                self._connection,
                self._request_id,
            )
        )

    def on_body(self, body: bytes) -> None:
        # data after a chunk header: it was not the last chunk, so no trailer section yet
        self._in_trailers = False
        self._feed_body = True
        self.request_body(body)

    def on_chunk_complete(self) -> None:
        # header callbacks after the last chunk are trailers (on_chunk_header marks them)
        if self._trailers is None:
            self._trailers = []

    def on_chunk_header(self) -> None:
        # llhttp reports the trailer fields after the last (zero-size) chunk's header and before
        # its chunk_complete: a header callback after any chunk header is a trailer
        if self._trailers is None:
            self._trailers = []
        self._in_trailers = True

    def on_message_complete(self) -> None:
        self.request_end(self._trailers)
