"""One HTTP/1.1 connection to an upstream peer, used by one exchange at a time."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httptools

from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.forwarding import upstream_request_head
from portcullis.engine.messages import Headers
from portcullis.engine.outbox import HeldWrites

if TYPE_CHECKING:
    from portcullis.engine.exchange import Exchange
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.pool import Pool

# what the connection is doing, for the watchdog
_IDLE, _WAITING, _READING, _TUNNEL = range(4)


class UpstreamConnection(HeldWrites, asyncio.Protocol):
    __slots__ = (
        "_bound",
        "_fields",
        "_head_only",
        "_headers",
        "_held",
        "_idle_timeout",
        "_outbox",
        "_parser",
        "_paused",
        "_response_timeout",
        "_state",
        "_trailers",
        "closed",
        "deadline",
        "exchange",
        "got_bytes",
        "needs_end",
        "pool",
        "transport",
        "watchdog",
    )

    def __init__(self, pool: Pool, watchdog: Watchdog) -> None:
        self.pool = pool
        self.watchdog = watchdog
        self.transport: Any = None  # an asyncio transport (uvloop's are not asyncio.Transport subclasses)
        self.exchange: Exchange | None = None
        self.deadline = 0.0
        self.closed = False
        self.got_bytes = False
        self.needs_end = False  # a chunked request body ends with the last chunk
        self._state = _IDLE
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: Headers = []
        self._fields = self._headers  # where the parser's next field goes: the head's, or the trailers
        self._trailers: Headers | None = None
        self._idle_timeout = 60.0
        self._response_timeout = 60.0
        self._held: list[bytes] | None = None  # sent at the end of this turn of the loop (outbox.py)
        self._outbox = watchdog.outbox
        self._head_only = False
        self._bound = False
        self._paused = False

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.watchdog.watch(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        exchange = self.exchange
        if self._state == _TUNNEL:
            if exchange is not None:
                exchange.tunnel_from_upstream(data)
            return
        if exchange is None or self._parser is None:
            # bytes nobody asked for: this connection cannot be trusted any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
            if self.exchange is not None:  # the response is still going: send what is held back
                self.exchange.flush_downstream()
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self._state = _TUNNEL
            self.deadline = 0.0
            exchange.upstream_upgraded(data[offset:])
        except httptools.HttpParserError as exc:
            still_ours = self.exchange is exchange  # an exchange that let go of this connection is not told
            self.close()
            if still_ours:
                exchange.upstream_failed(ProxyError(ErrorKind.UPSTREAM_PROTOCOL, f"invalid response: {exc}"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._held = None
        self._parser = None  # it holds this object's callbacks: the cycle would wait for the collector
        self.watchdog.unwatch(self)
        exchange = self.exchange
        self._unbind()
        if exchange is None:
            self.pool.discard(self)
            return
        if self._state == _TUNNEL:
            exchange.tunnel_closed()
        elif self._state == _READING and exchange.response_close_delimited:
            # a response without Content-Length or chunking ends when the peer closes
            exchange.upstream_complete(None, reusable=False)
        else:
            detail = f"upstream closed the connection: {exc}" if exc else "upstream closed the connection"
            exchange.upstream_failed(ProxyError(ErrorKind.UPSTREAM_RESET, detail))

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # ------------------------------------------------------------------ parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None and self.exchange is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # interim answers (100 Continue ...) are ours to send, not the peer's
            self._headers = self._fields = []
            return
        self._state = _READING
        self.deadline = self.watchdog.now + self._idle_timeout
        headers = self._headers
        self._headers = self._fields = []
        self.exchange.upstream_head(status, headers, self._parser.should_keep_alive())
        if self._head_only and self.exchange is not None and status != 101:
            parser, self._parser = self._parser, None  # it would wait for the body the head announced
            self._finish(parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.deadline = self.watchdog.now + self._idle_timeout
            exchange.upstream_body(body)

    def on_chunk_complete(self) -> None:
        # the header callbacks after the last chunk are trailers
        if self._trailers is None:
            self._trailers = []
        self._fields = self._trailers

    def on_chunk_header(self) -> None:
        # llhttp reports the trailer fields after the last (zero-size) chunk's header and before
        # its chunk_complete: a header callback after any chunk header is a trailer
        if self._trailers is None:
            self._trailers = []
        self._fields = self._trailers

    def on_message_complete(self) -> None:
        # llhttp ends a 101's message with its head: the tunnel starts in data_received instead
        parser = self._parser
        exchange = self.exchange
        if (
            self._state == _READING
            and not self._head_only
            and parser is not None
            and exchange is not None  # not when the exchange dropped this connection (a retry)
            and parser.get_status_code() != 101
        ):
            self._state = _IDLE
            self.deadline = 0.0
            exchange.upstream_complete(self._trailers, reusable=parser.should_keep_alive())

    # ------------------------------------------------------------------ used by the exchange
    def _unbind(self) -> None:
        self.exchange = None
        if self._bound:
            self._bound = False
            self.pool.busy -= 1

    def park(self, deadline: float) -> None:
        """Back to the pool: idle until `deadline`."""
        self.exchange = None
        if self._bound:
            self._bound = False
            self.pool.busy -= 1
        self._state = _IDLE
        self.deadline = deadline
        if self._paused:
            # the response ended while a slow client had reading paused: an idle connection
            # must read again, or the next exchange on it waits forever
            self.resume_reading()

    def bind(self, exchange: Exchange, head_only: bool, response_timeout: float, idle_timeout: float) -> None:
        self.exchange = exchange
        if not self._bound:
            self._bound = True
            self.pool.busy += 1
        if self._parser is None:
            # a parser that ended its last response cleanly reads the next one on the connection
            self._parser = httptools.HttpResponseParser(self)
        self._headers = self._fields = []
        self._trailers = None
        self._head_only = head_only
        self._idle_timeout = idle_timeout
        self._state = _WAITING
        self.got_bytes = False
        self._response_timeout = response_timeout
        self.deadline = self.watchdog.now + response_timeout

    def send_head(self) -> None:
        exchange = self.exchange
        transport = self.transport
        if exchange is None or transport is None:
            return
        chunked = self.needs_end = exchange.req_chunked
        if chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif exchange.req_length is not None:
            framing = b"Content-Length: %d\r\n" % exchange.req_length
        else:
            framing = b""
        runtime = exchange.runtime
        self._put(
            upstream_request_head(
                exchange.ctx, exchange.ds.trusted, runtime.request_id_header, framing, exchange.upgrade,
                runtime.request_id_header_lower,
            )
        )  # fmt: skip

    def send_body(self, chunk: bytes) -> None:
        if self.transport is not None:
            self._put(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.needs_end else chunk)
            if self._state == _WAITING:
                # the response timeout runs from the last request byte sent, so a long upload
                # that the peer keeps reading is not cut with a 504
                self.deadline = self.watchdog.now + self._response_timeout

    def send_end(self, trailers: Headers | None) -> None:
        if self.needs_end:
            fields = b"".join(n + b": " + v + b"\r\n" for n, v in trailers) if trailers else b""
            self.write(b"0\r\n" + fields + b"\r\n")

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self._put(data)
            if self._state == _WAITING:
                self.deadline = self.watchdog.now + self._response_timeout

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self._unbind()
        self.deadline = 0.0
        if self.transport is not None:
            self.send_held()
            self.transport.close()

    def abort(self) -> None:
        self._unbind()
        self.deadline = 0.0
        self._held = None
        if self.transport is not None:
            self.transport.abort()

    def on_deadline(self) -> None:
        exchange = self.exchange
        if exchange is None:  # idle in the pool too long
            self.pool.discard(self)
            self.close()
            return
        self.abort()
        if self._state == _WAITING:
            exchange.upstream_failed(ProxyError(ErrorKind.UPSTREAM_TIMEOUT, "upstream sent no response in time"))
        else:
            exchange.upstream_failed(ProxyError(ErrorKind.UPSTREAM_TIMEOUT, "upstream stalled mid-response"))

    # ------------------------------------------------------------------ internals
    def _finish(self, reusable: bool) -> None:
        exchange = self.exchange
        assert exchange is not None
        self._state = _IDLE
        self.deadline = 0.0
        exchange.upstream_complete(self._trailers, reusable=reusable)
