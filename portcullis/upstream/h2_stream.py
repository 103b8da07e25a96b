"""One request on an HTTP/2 connection to a peer: the exchange's link (see upstream/link.py).

It frames the exchange's request as HEADERS, DATA and an END_STREAM (or trailers), holding back
what the peer's window does not take yet (and pausing the client meanwhile), and hands the
response to the exchange, granting the peer more window only while the client keeps up.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, ClassVar

import h2.errors

from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.forwarding import upstream_request_fields

if TYPE_CHECKING:
    from portcullis.engine.exchange import Exchange
    from portcullis.engine.messages import Headers
    from portcullis.upstream.h2_connection import H2UpstreamConnection

_NO_BODY_STATUSES = frozenset({204, 304})


class H2UpstreamStream:
    needs_end: ClassVar[bool] = True

    __slots__ = (
        "_blocked",
        "_end_pending",
        "_end_trailers",
        "_head_only",
        "_held",
        "_idle_timeout",
        "_local_ended",
        "_paused",
        "_pending",
        "_remote_ended",
        "_response_timeout",
        "_trailers",
        "_waiting",
        "conn",
        "deadline",
        "done",
        "exchange",
        "got_bytes",
        "stream_id",
    )

    def __init__(self, conn: H2UpstreamConnection) -> None:
        self.conn = conn
        self.exchange: Exchange | None = None
        self.stream_id = 0
        self.deadline = 0.0
        self.got_bytes = False
        self.done = False  # the link was let go of: nothing more reaches the exchange
        self._waiting = True  # for the response head
        self._head_only = False
        self._response_timeout = 60.0
        self._idle_timeout = 60.0
        self._pending: collections.deque[bytes] = collections.deque()  # body the peer's window did not take
        self._end_pending = False
        self._end_trailers: Headers | None = None
        self._local_ended = False
        self._remote_ended = False
        self._paused = False  # the client is slow: the peer gets no more window for now
        self._held = 0  # response bytes taken but not yet granted back to the peer
        self._blocked = False  # the exchange was told to stop reading its client
        self._trailers: Headers | None = None

    # ================================================================== the link, for the exchange
    def bind(self, exchange: Exchange, head_only: bool, response_timeout: float, idle_timeout: float) -> None:
        self.exchange = exchange
        self._head_only = head_only
        self._response_timeout = response_timeout
        self._idle_timeout = idle_timeout
        watchdog = self.conn.watchdog
        self.deadline = watchdog.now + response_timeout
        watchdog.watch(self)

    def send_head(self) -> None:
        exchange = self.exchange
        if exchange is None or self.done:
            return
        chunked, length = exchange.req_chunked, exchange.req_length
        no_body = not chunked and not length
        fields = upstream_request_fields(
            exchange.ctx, exchange.ds.trusted, exchange.runtime.request_id_header_lower, self.conn.scheme,
            None if chunked else length,
        )  # fmt: skip
        self.stream_id = self.conn.open(self, fields, no_body)
        if not self.stream_id:
            # told on the next round, as a lost connection would be: the exchange is still sending
            error = ProxyError(ErrorKind.UPSTREAM_REFUSED, "the HTTP/2 connection takes no more streams")
            self.conn.watchdog.loop.call_soon(self.fail, error, False)
            return
        self._local_ended = no_body

    def send_body(self, chunk: bytes) -> None:
        if self.done or self._local_ended or not self.stream_id:
            return
        self._touch()
        if self._pending:
            self._pending.append(chunk)
            return
        rest = self.conn.send_data(self.stream_id, chunk)
        if rest:
            self._pending.append(rest)
            self.update_block()

    def send_end(self, trailers: Headers | None) -> None:
        if self.done or self._local_ended or not self.stream_id:
            return
        if self._pending:
            self._end_pending = True
            self._end_trailers = trailers
            return
        self._end(trailers)

    def write(self, data: bytes) -> None:
        """No protocol upgrade over HTTP/2: the exchange refuses one before it gets here."""

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        held, self._held = self._held, 0
        if held and not self.done:
            self.conn.acknowledge(self.stream_id, held)

    def abort(self) -> None:
        self._detach()

    def close(self) -> None:
        self._detach()

    def release(self) -> None:
        """The exchange ended cleanly (through the pool)."""
        self._detach()

    # ================================================================== flow control
    def window_opened(self) -> None:
        """The peer granted window (or the connection's writing resumed): send what waits."""
        pending = self._pending
        while pending and not self.done:
            rest = self.conn.send_data(self.stream_id, pending[0])
            if rest:
                pending[0] = rest
                break
            pending.popleft()
        if not pending and self._end_pending and not self.done:
            self._end_pending = False
            self._end(self._end_trailers)
        self.update_block()

    def update_block(self) -> None:
        blocked = bool(self._pending) or self.conn.write_paused
        exchange = self.exchange
        if blocked != self._blocked and exchange is not None:
            self._blocked = blocked
            if blocked:
                exchange.upstream_write_paused()
            else:
                exchange.upstream_write_resumed()

    # ================================================================== from the connection
    def on_response(self, headers: Headers, ended: bool) -> None:
        self.got_bytes = True
        exchange = self.exchange
        if exchange is None:
            return
        status = 0
        fields: Headers = []
        has_length = False
        for name, value in headers:
            if name == b":status":
                status = int(value) if value.isdigit() else 0
            elif name[:1] != b":":
                fields.append((name, value))
                has_length = has_length or name == b"content-length"
        if status < 200:
            self.fail(ProxyError(ErrorKind.UPSTREAM_PROTOCOL, "invalid response status"), reset=True)
            return
        self._waiting = False
        self._touch()
        if ended and not has_length and not self._head_only and status not in _NO_BODY_STATUSES:
            # the whole response is this head (gRPC's Trailers-Only): an HTTP/1.1 client needs the length
            fields.append((b"content-length", b"0"))
        exchange.upstream_head(status, fields, True, ended)

    def on_data(self, data: bytes, size: int) -> None:
        self.got_bytes = True
        self._touch()
        exchange = self.exchange
        if exchange is not None and data:
            exchange.upstream_body(data)
        if self._paused and not self.done:
            self._held += size
        else:
            self.conn.acknowledge(self.stream_id, size)

    def on_trailers(self, headers: Headers) -> None:
        self._trailers = [(n, v) for n, v in headers if n[:1] != b":"]

    def on_end(self) -> None:
        self._remote_ended = True
        exchange = self.exchange
        if exchange is None:
            return
        self.deadline = 0.0
        if self._waiting:  # no response head (h2 would have refused such a stream already)
            error = ProxyError(ErrorKind.UPSTREAM_PROTOCOL, "the peer ended the stream without a response")
            self.fail(error, reset=False)
            return
        exchange.upstream_complete(self._trailers, True)  # the exchange releases or closes this link

    def on_reset(self, code: h2.errors.ErrorCodes | None) -> None:
        self._local_ended = self._remote_ended = True
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            error = ProxyError(ErrorKind.UPSTREAM_REFUSED, "the peer refused the stream (REFUSED_STREAM)")
        else:
            error = ProxyError(ErrorKind.UPSTREAM_RESET, f"the peer reset the stream ({getattr(code, 'name', code)})")
        self.fail(error, reset=False)

    def on_deadline(self) -> None:
        if self._waiting:
            error = ProxyError(ErrorKind.UPSTREAM_TIMEOUT, "upstream sent no response in time")
        else:
            error = ProxyError(ErrorKind.UPSTREAM_TIMEOUT, "upstream stalled mid-response")
        self.fail(error, reset=True)

    def fail(self, error: ProxyError, reset: bool) -> None:
        """Let go of the stream (resetting it if `reset` and it is open) and tell the exchange."""
        exchange = self.exchange
        if self.done:
            return
        if not reset:
            self._local_ended = self._remote_ended = True
        self._detach()
        if exchange is not None:
            exchange.upstream_failed(error)

    # ================================================================== internals
    def _end(self, trailers: Headers | None) -> None:
        self._local_ended = True
        self._touch()
        self.conn.end_stream(self.stream_id, trailers)

    def _touch(self) -> None:
        """Traffic either way: the response (or idle) timeout starts again."""
        if self.exchange is not None:
            timeout = self._response_timeout if self._waiting else self._idle_timeout
            self.deadline = self.conn.watchdog.now + timeout

    def _detach(self) -> None:
        if self.done:
            return
        self.done = True
        exchange, self.exchange = self.exchange, None
        conn = self.conn
        self.deadline = 0.0
        conn.watchdog.unwatch(self)
        self._pending.clear()
        self._end_pending = False
        if self._blocked and exchange is not None and not exchange.finished:
            self._blocked = False
            exchange.upstream_write_resumed()  # (a retry goes on with another link)
        stream_id = self.stream_id
        if stream_id:
            if not (self._local_ended and self._remote_ended):
                conn.reset(stream_id)  # we will neither send nor read the rest
            held, self._held = self._held, 0
            if held:
                conn.acknowledge(stream_id, held)  # (the connection window still counts them)
        conn.released(self)
