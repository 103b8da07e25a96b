"""The HTTP/1.1 client connection: keep-alive, pipelining, timeouts and response writing.

Parsing is the sans-IO `H1RequestReader`'s; malformed input is answered here with a 4xx and
the connection closed, so nothing ambiguous ever becomes an exchange or reaches an upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from portcullis.engine.context import RequestContext
from portcullis.engine.errors import ErrorKind, ProxyError, reason_phrase, render_error
from portcullis.engine.exchange import Exchange
from portcullis.engine.forwarding import (
    CHUNKED,
    HAS_REQUEST_ID,
    NAMES_MORE_FIELDS,
    forward_head_fields,
    forward_response_fields,
)
from portcullis.engine.messages import Headers
from portcullis.engine.outbox import HOLD_BELOW, HeldWrites
from portcullis.http.h1 import H1RequestReader, RequestHead, UpgradeRequested

if TYPE_CHECKING:
    from portcullis.tls.certs import ClientIdentity
    from portcullis.worker.runtime import ListenerRuntime, Runtime

_STATUS_LINES: dict[int, bytes] = {}
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)

# connection states, for the watchdog
_IDLE, _HEAD, _BODY, _WAIT, _TUNNEL, _LINGER = range(6)
LINGER_TIME = 2.0
"""Seconds a connection closed while the client was still sending reads and drops what comes."""


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode()
    return line


class H1Connection(H1RequestReader, HeldWrites, asyncio.Protocol):
    __slots__ = (
        "_active",
        "_closing",
        "_final_left",
        "_held",
        "_keep_alive",
        "_listener",
        "_out",
        "_outbox",
        "_pending_error",
        "_queue",
        "_reading",
        "_resp_chunked",
        "_runtime",
        "_state",
        "_tunnel_pending",
        "_version",
        "client_cert",
        "client_ip",
        "client_port",
        "deadline",
        "transport",
        "trusted",
    )

    def __init__(self, runtime: Runtime, listener: ListenerRuntime) -> None:
        super().__init__(runtime.h1_settings)
        self._runtime = runtime
        self._listener = listener
        self.transport: Any = None  # an asyncio transport (uvloop's are not asyncio.Transport subclasses)
        self.deadline = 0.0
        self.trusted = False
        self.client_cert: ClientIdentity | None = None
        self.client_ip = ""
        self.client_port = 0
        self._state = _IDLE
        self._closing = False
        self._active: Exchange | None = None
        self._reading: Exchange | None = None
        self._queue: deque[Exchange] | None = None
        self._pending_error: ProxyError | None = None
        self._tunnel_pending: list[bytes] | None = None
        self._resp_chunked = False
        self._out: bytes | None = None
        self._held: list[bytes] | None = None  # sent at the end of this turn of the loop (outbox.py)
        self._outbox = runtime.watchdog.outbox
        # body bytes before the last write of a response the connection closes after; -1: none (see _cork)
        self._final_left = -1
        self._keep_alive = True
        self._version = "1.1"

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip, self.client_port = peer[0], peer[1]
        runtime = self._runtime
        self.trusted = runtime.trusts_proxies and runtime.is_trusted(self.client_ip)
        self.deadline = runtime.watchdog.now + runtime.client_header_timeout
        runtime.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._state == _TUNNEL:
            if self._active is not None:
                self._active.tunnel_from_downstream(data)
            return
        if self._tunnel_pending is not None:  # waiting for the peer's 101
            self._tunnel_pending.append(data)
            return
        if self._closing:
            return
        if self._state == _IDLE:
            self._state = _HEAD
            self.deadline = self._runtime.watchdog.now + self._runtime.client_header_timeout
        try:
            self.feed(data)
        except UpgradeRequested as upgrade:
            self._tunnel_pending = [upgrade.leftover]
            self.pause_reading()
        except ProxyError as error:
            self._protocol_error(error)

    def eof_received(self) -> bool:
        # a client that half-closes after its request still gets the answer
        return self._active is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._held = None
        self.release_parser()
        self.deadline = 0.0
        runtime = self._runtime
        runtime.connection_closed(self)
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
        elif state == _LINGER and self.transport is not None:
            self.transport.close()

    # ================================================================== request events
    def request_head(self, head: RequestHead) -> None:
        self._version = head.version
        self._keep_alive = head.keep_alive
        runtime = self._runtime
        listener = self._listener
        ctx = RequestContext(
            head.method, head.target, head.headers, head.version,
            listener.host if head.host_name is None else head.host_name,
            self.client_ip, self.client_port, listener.scheme, listener.name, runtime.clock(),
            head.host, head.connection, head.request_id,
        )  # fmt: skip
        ctx.client_cert = self.client_cert
        exchange = Exchange(
            self, ctx, runtime, head.content_length, head.chunked, head.expect_continue, head.upgrade
        )
        self._reading = exchange
        if head.has_body:
            self._state = _BODY
            self.deadline = runtime.watchdog.now + runtime.client_body_timeout
        else:
            self._state = _WAIT
            self.deadline = 0.0
        if self._active is None:
            self._active = exchange
            exchange.begin(listener.router)
        else:
            # pipelined: answered in order once the one before it is done
            if self._queue is None:
                self._queue = deque()
            self._queue.append(exchange)
            self.pause_reading()

    def request_body(self, chunk: bytes) -> None:
        if self._state == _BODY:
            self.deadline = self._runtime.watchdog.now + self._runtime.client_body_timeout
        if self._reading is not None:
            self._reading.request_body(chunk)

    def request_end(self, trailers: Headers | None) -> None:
        exchange = self._reading
        self._reading = None
        if self._state == _BODY:
            self._state = _WAIT
            self.deadline = 0.0
        if exchange is not None:
            exchange.request_end(trailers)

    # ================================================================== Downstream, for the exchange
    def send_head(
        self, status: int, headers: Headers, length: int | None, no_body: bool, close: bool
    ) -> None:
        lines = [status_line(status)]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        self._end_head(lines, status, length, no_body, close)

    def forward_head(
        self, status: int, headers: Headers, no_body: bool, request_id: str, request_id_header: bytes
    ) -> bool:
        lines = [_STATUS_LINES.get(status) or status_line(status)]
        length, flags = forward_response_fields(headers, self._runtime.request_id_header_lower, lines)
        if flags & NAMES_MORE_FIELDS:
            return forward_head_fields(self, status, headers, no_body, request_id, request_id_header)
        if not flags & HAS_REQUEST_ID and request_id:
            lines += (request_id_header, b": ", request_id.encode(), b"\r\n")
        self._end_head(lines, status, length, no_body, False)
        return length is None and not flags & CHUNKED and not no_body

    def _end_head(self, lines: list[bytes], status: int, length: int | None, no_body: bool, close: bool) -> None:
        """Add the framing and connection fields to a head's field lines; hold it for the body."""
        self._resp_chunked = False
        if length is not None and status != 204 and status >= 200:
            lines.append(b"Content-Length: %d\r\n" % length)
        elif not no_body and length is None:
            if self._version == "1.1":
                self._resp_chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                close = True  # an HTTP/1.0 client learns the end of the body from the close
        if close or not self._keep_alive or self._runtime.retired:
            # a retired runtime (reload, drain) announces the close, so no client reuses the connection
            self._keep_alive = False
            if _TCP_CORK is not None and self._listener.ssl_context is None:
                self._final_left = length if length is not None and not no_body else 0
            lines.append(b"Connection: close\r\n\r\n")
        elif self._version == "1.0":
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        # held back until the first body bytes or `flush`: head and body leave in one send
        self._out = b"".join(lines)

    def send_body(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        out = self._out
        if self._final_left > 0:
            self._final_left -= len(data)
            if self._final_left <= 0:
                self._cork()
        if len(data) >= HOLD_BELOW:
            # large pieces are not copied into one buffer: the transport gathers them in one send
            parts = [data]
            if self._resp_chunked:
                parts = [b"%x\r\n" % len(data), data, b"\r\n"]
            if out is not None:
                parts.insert(0, out)
                self._out = None
            self.send_held()
            transport.writelines(parts)
            return
        if self._resp_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if out is not None:
            data = out + data
            self._out = None
        self._put(data)

    def send_end(self, trailers: Headers | None) -> None:
        tail = b""
        if self._resp_chunked:
            tail = (
                b"0\r\n"
                + (b"".join(n + b": " + v + b"\r\n" for n, v in trailers) if trailers else b"")
                + b"\r\n"
            )
            self._resp_chunked = False
        if self._out is not None:
            tail = self._out + tail
            self._out = None
        if tail and self.transport is not None:
            if self._final_left >= 0:
                self._cork()
            self._put(tail)

    def _cork(self) -> None:
        """The next write is the connection's last: corked, its last segment and the close's FIN
        leave as one packet, so the client is woken once, not twice. (Plain TCP only: a TLS close
        writes its close_notify later, which the cork would hold back.)"""
        self._final_left = -1
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and _TCP_CORK is not None:
            with contextlib.suppress(OSError):  # uncorked, the FIN only costs one more packet
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)

    def flush(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            if self.transport is not None:
                self._put(out)

    def send_continue(self) -> None:
        if self._version == "1.1" and self.transport is not None:
            self._put(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_switch(self, headers: Headers) -> None:
        assert self.transport is not None
        lines = [status_line(101)]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self.send_held()  # the tunnel's bytes are written at once, after everything before them
        self.transport.write(b"".join(lines))
        self._state = _TUNNEL
        self.deadline = 0.0
        pending, self._tunnel_pending = self._tunnel_pending, None
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
        self.flush()
        self._close()

    def exchange_done(self, keep_alive: bool) -> None:
        self._active = None
        if self._closing:
            return
        if (
            not keep_alive
            or not self._keep_alive
            or self._tunnel_pending is not None
            or self._state == _TUNNEL
        ):
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
        if queue is not None:
            self._queue = None
            self.resume_reading()
        if self._reading is None:
            self._state = _IDLE
            # a connection of a retired runtime (its head was sent before the reload) gets 1 s, not the keep-alive
            idle = 1.0 if self._runtime.retired else self._runtime.keepalive_timeout
            self.deadline = self._runtime.watchdog.now + idle

    def close_if_idle(self) -> bool:
        """Close the connection if it is between requests (drain, reload). True if it did."""
        if self._state == _IDLE and self._active is None:
            self._close()
            return True
        return False

    # ================================================================== errors
    def _protocol_error(self, error: ProxyError) -> None:
        """Malformed or oversized input: answer it (in order) and close."""
        self.stop_parsing()
        self._state = _WAIT
        self.deadline = 0.0
        self.pause_reading()
        reading = self._reading
        if reading is not None and reading is self._active:
            reading.fail(error)
            self._close()
        elif self._active is not None:
            self._pending_error = error  # answered once the response in progress is done
        else:
            self._reject(error)

    def _reject(self, error: ProxyError) -> None:
        request_id = self._runtime.next_request_id()
        content_type, body = render_error(error.status, error.detail, request_id, self.partial_accept())
        head = (
            status_line(error.status)
            + b"Content-Type: " + content_type
            + b"\r\nContent-Length: %d\r\n" % len(body)
            + self._runtime.request_id_header + b": " + request_id.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        if self.transport is not None:
            self._put(head + body)
        self._runtime.rejected(error, self.client_ip, request_id)
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stopped = True  # no more parsing
        self.deadline = 0.0
        transport = self.transport
        if transport is not None:
            self.send_held()
            if self._state in (_HEAD, _BODY) and transport.can_write_eof():
                self._linger(transport)
                return
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Closed while the client is still sending (an early answer to a request with a body, a
        413, a 431): closing now would make the kernel answer its next bytes with a reset, which
        can reach the client before it has read the answer. So the answer ends with a FIN, and
        what still comes is read and dropped until the client closes or LINGER_TIME has passed."""
        self._state = _LINGER
        transport.write_eof()
        transport.resume_reading()
        self.deadline = self._runtime.watchdog.now + LINGER_TIME
