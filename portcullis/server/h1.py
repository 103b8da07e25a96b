"""The HTTP/1.1 client side: strict parsing (RFC 9112) with httptools, keep-alive, pipelining.

Malformed input is answered here with a 4xx and the connection is closed; nothing ambiguous
ever reaches an exchange, so it never reaches an upstream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from portcullis.engine.context import RequestContext
from portcullis.engine.errors import ErrorKind, ProxyError, reason_phrase, render_error
from portcullis.engine.exchange import Exchange
from portcullis.engine.messages import Headers

if TYPE_CHECKING:
    from portcullis.worker.runtime import ListenerRuntime, Runtime

_SPECIAL: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_STATUS_LINES: dict[int, bytes] = {}

# connection states, for the watchdog
_IDLE, _HEAD, _BODY, _WAIT, _TUNNEL = range(5)


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode()
    return line


class _Closing(Exception):
    """Stops the parser once the connection is being closed."""


class H1Connection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_body_expected",
        "_chunked",
        "_closing",
        "_content_length",
        "_expect",
        "_head_bytes",
        "_header_bytes",
        "_headers",
        "_host",
        "_host_count",
        "_in_trailers",
        "_keep_alive",
        "_listener",
        "_parser",
        "_pending_error",
        "_queue",
        "_reading",
        "_resp_chunked",
        "_runtime",
        "_state",
        "_trailers",
        "_tunnel_pending",
        "_upgrade",
        "_upgrading",
        "_url",
        "_version",
        "client_ip",
        "client_port",
        "deadline",
        "transport",
        "trusted",
    )

    def __init__(self, runtime: Runtime, listener: ListenerRuntime) -> None:
        self._runtime = runtime
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0
        self.trusted = False
        self.client_ip = ""
        self.client_port = 0
        self._parser = httptools.HttpRequestParser(self)
        self._state = _IDLE
        self._closing = False
        self._active: Exchange | None = None
        self._reading: Exchange | None = None
        self._queue: deque[Exchange] | None = None
        self._pending_error: ProxyError | None = None
        self._upgrading = False
        self._tunnel_pending: list[bytes] | None = None
        self._resp_chunked = False
        self._keep_alive = True
        self._head_bytes = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._host: bytes | None = None
        self._host_count = 0
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None
        self._trailers: Headers | None = None
        self._in_trailers = False
        self._body_expected = False
        self._version = "1.1"

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip, self.client_port = peer[0], peer[1]
        runtime = self._runtime
        self.trusted = runtime.is_trusted(self.client_ip)
        self.deadline = runtime.watchdog.now + runtime.client_header_timeout
        runtime.watchdog.watch(self)
        runtime.connection_opened()

    def data_received(self, data: bytes) -> None:
        if self._state == _TUNNEL:
            if self._active is not None:
                self._active.tunnel_from_downstream(data)
            return
        if self._closing:
            return
        if self._upgrading:
            if self._tunnel_pending is not None:
                self._tunnel_pending.append(data)
            return
        if self._state == _IDLE:
            self._state = _HEAD
            self._head_bytes = 0
            self.deadline = self._runtime.watchdog.now + self._runtime.client_header_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrading = True
            self._tunnel_pending = [data[upgrade.args[0] :]]
            assert self.transport is not None
            self.transport.pause_reading()
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Closing):
                return
            if isinstance(cause, ProxyError):
                self._protocol_error(cause)
            else:
                self._protocol_error(ProxyError(ErrorKind.INTERNAL, "internal error"))
                raise
            return
        except httptools.HttpParserError as exc:
            self._protocol_error(ProxyError(ErrorKind.BAD_REQUEST, f"malformed request: {exc}"))
            return
        if self._state == _HEAD:
            # an unfinished head is buffered inside the parser: bound it
            self._head_bytes += len(data)
            limits = self._runtime
            if self._head_bytes > limits.max_header_bytes + limits.max_request_line:
                if not self._url or len(self._url) > limits.max_request_line:
                    self._protocol_error(ProxyError(ErrorKind.URI_TOO_LONG, "request line too long"))
                else:
                    self._protocol_error(ProxyError(ErrorKind.HEADERS_TOO_LARGE, "request head too large"))

    def eof_received(self) -> bool:
        # a client that half-closes after its request still gets the answer
        return self._active is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.deadline = 0.0
        runtime = self._runtime
        runtime.watchdog.unwatch(self)
        runtime.connection_closed()
        active = self._active
        self._active = None
        if active is not None:
            active.client_gone()

    def pause_writing(self) -> None:
        if self._active is not None:
            self._active.downstream_write_paused()

    def resume_writing(self) -> None:
        if self._active is not None:
            self._active.downstream_write_resumed()

    def on_deadline(self) -> None:
        state = self._state
        if state == _HEAD:
            self._protocol_error(ProxyError(ErrorKind.CLIENT_TIMEOUT, "request head not received in time"))
        elif state == _BODY:
            error = ProxyError(ErrorKind.CLIENT_TIMEOUT, "request body stalled")
            if self._reading is not None and self._reading is self._active:
                self._reading.fail(error)
            self._close()
        elif state == _IDLE:
            self._close()

    # ================================================================== parser callbacks
    def on_message_begin(self) -> None:
        if self._closing:
            raise _Closing()
        self._reset_head()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._runtime.max_request_line:
            raise ProxyError(ErrorKind.URI_TOO_LONG, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            assert self._trailers is not None
            self._trailers.append((name, value))
            return
        headers = self._headers
        self._header_bytes += len(name) + len(value) + 4
        runtime = self._runtime
        if self._header_bytes > runtime.max_header_bytes or len(headers) >= runtime.max_headers:
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
            else:
                self._upgrade = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ProxyError(ErrorKind.VERSION_NOT_SUPPORTED, f"HTTP/{version} is not supported here")
        if self._host_count > 1:
            raise ProxyError(ErrorKind.BAD_REQUEST, "repeated Host header")
        if self._host_count == 0 and version == "1.1":
            raise ProxyError(ErrorKind.BAD_REQUEST, "missing Host header")
        method = parser.get_method().decode("latin-1")
        if method == "CONNECT":
            raise ProxyError(ErrorKind.METHOD_NOT_ALLOWED, "CONNECT is not supported")
        url = self._url
        if not url.startswith(b"/"):
            if url == b"*" and method == "OPTIONS":
                pass
            elif url.startswith((b"http://", b"https://")):
                # absolute form (RFC 9112 3.2.2): the target's authority wins over Host
                _, _, rest = url.partition(b"://")
                authority, slash, path = rest.partition(b"/")
                self._host = authority
                url = slash + path or b"/"
            else:
                raise ProxyError(ErrorKind.BAD_REQUEST, "invalid request target")
        self._version = version
        self._keep_alive = parser.should_keep_alive()
        runtime = self._runtime
        ctx = RequestContext(
            method,
            url,
            self._headers,
            version,
            self._host_name(),
            self.client_ip,
            self.client_port,
            self._listener.scheme,
            self._listener.name,
            runtime.watchdog.now,
        )
        upgrade = self._upgrade if parser.should_upgrade() else None
        exchange = Exchange(self, ctx, runtime, self._content_length, self._chunked, self._expect, upgrade)
        self._reading = exchange
        self._body_expected = self._chunked or bool(self._content_length)
        if self._body_expected:
            self._state = _BODY
            self.deadline = runtime.watchdog.now + runtime.client_body_timeout
        else:
            self._state = _WAIT
            self.deadline = 0.0
        if self._active is None:
            self._active = exchange
            exchange.begin(self._listener.router)
        else:
            # pipelined: answered in order once the one before it is done
            if self._queue is None:
                self._queue = deque()
            self._queue.append(exchange)
            assert self.transport is not None
            self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._state == _BODY:
            self.deadline = self._runtime.watchdog.now + self._runtime.client_body_timeout
        if self._reading is not None:
            self._reading.request_body(body)

    def on_chunk_complete(self) -> None:
        if self._trailers is None:
            self._trailers = []
        self._in_trailers = True

    def on_chunk_header(self) -> None:
        self._in_trailers = False

    def on_message_complete(self) -> None:
        exchange = self._reading
        self._reading = None
        if self._state in (_BODY, _HEAD):
            self._state = _WAIT
            self.deadline = 0.0
        if exchange is not None:
            exchange.request_end(self._trailers)

    def _host_name(self) -> str:
        host = self._host
        if not host:
            return self._listener.host
        if host.startswith(b"["):
            return host[: host.find(b"]") + 1].decode("latin-1").lower()
        return host.partition(b":")[0].decode("latin-1").lower()

    # ================================================================== Downstream, for the exchange
    def send_head(
        self, status: int, headers: Headers, length: int | None, no_body: bool, close: bool
    ) -> None:
        lines = [status_line(status)]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        self._resp_chunked = False
        if length is not None and status != 204 and status >= 200:
            lines.append(b"Content-Length: %d\r\n" % length)
        elif not no_body and length is None:
            if self._version == "1.1":
                self._resp_chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                close = True  # an HTTP/1.0 client learns the end of the body from the close
        if close or not self._keep_alive:
            self._keep_alive = False
            lines.append(b"Connection: close\r\n\r\n")
        elif self._version == "1.0":
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        assert self.transport is not None
        self.transport.write(b"".join(lines))

    def send_body(self, data: bytes) -> None:
        assert self.transport is not None
        if self._resp_chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def send_end(self, trailers: Headers | None) -> None:
        if self._resp_chunked:
            assert self.transport is not None
            tail = b"".join(n + b": " + v + b"\r\n" for n, v in trailers) if trailers else b""
            self.transport.write(b"0\r\n" + tail + b"\r\n")
            self._resp_chunked = False

    def send_continue(self) -> None:
        if self._version == "1.1" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_switch(self, headers: Headers) -> None:
        assert self.transport is not None
        lines = [status_line(101)]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))
        self._state = _TUNNEL
        self.deadline = 0.0
        pending, self._tunnel_pending = self._tunnel_pending, None
        self._upgrading = False
        if pending and self._active is not None:
            for data in pending:
                if data:
                    self._active.tunnel_from_downstream(data)
        self.transport.resume_reading()

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._closing and not self._queue:
            self.transport.resume_reading()

    def abort(self) -> None:
        self._close()

    def exchange_done(self, keep_alive: bool) -> None:
        self._active = None
        if self._closing:
            return
        if not keep_alive or not self._keep_alive or self._upgrading or self._state == _TUNNEL:
            self._close()
            return
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            self._reject(error)
            return
        queue = self._queue
        if queue:
            nxt = self._active = queue.popleft()
            nxt.begin(self._listener.router)  # may finish at once and come back here
            return
        if self._queue is not None and self.transport is not None:
            self._queue = None
            self.transport.resume_reading()
        if self._reading is None:
            self._state = _IDLE
            self.deadline = self._runtime.watchdog.now + self._runtime.keepalive_timeout

    # ================================================================== errors
    def _protocol_error(self, error: ProxyError) -> None:
        """Malformed or oversized input: answer it (in order) and close."""
        self._closing_parser()
        reading = self._reading
        if reading is not None and reading is self._active:
            reading.fail(error)
            self._close()
        elif self._active is not None:
            self._pending_error = error  # answer once the response in progress is done
        else:
            self._reject(error)

    def _closing_parser(self) -> None:
        self._state = _WAIT
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.pause_reading()

    def _reject(self, error: ProxyError) -> None:
        request_id = self._runtime.next_request_id()
        accept = None
        for name, value in self._headers:
            if name.lower() == b"accept":
                accept = value
        content_type, body = render_error(error.status, error.detail, request_id, accept)
        head = (
            status_line(error.status)
            + b"Content-Type: "
            + content_type
            + b"\r\nContent-Length: %d\r\n" % len(body)
            + self._runtime.request_id_header
            + b": "
            + request_id.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        if self.transport is not None:
            self.transport.write(head + body)
        self._runtime.rejected(error, self.client_ip, request_id)
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.close()
