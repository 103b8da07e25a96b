"""One HTTP/2 stream: the exchange's `Downstream` for a request on an `H2Connection`.

It turns the exchange's calls into HTTP/2 frames through its connection, waits for the
client's flow-control window before sending body data, and pauses the exchange's upstream
meanwhile.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import h2.errors
import h2.exceptions

from portcullis.engine.forwarding import forward_head_fields
from portcullis.engine.messages import Headers

if TYPE_CHECKING:
    from portcullis.engine.exchange import Exchange
    from portcullis.server.h2 import H2Connection

CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
HSTS = b"strict-transport-security"
STATUS = {code: str(code).encode() for code in range(100, 600)}


class H2Stream:
    """One request/response on an HTTP/2 connection: the exchange's `Downstream`."""

    __slots__ = (
        "_blocked",
        "_end_pending",
        "_held",
        "_pending",
        "_trailers",
        "conn",
        "done",
        "ended",
        "exchange",
        "held",
        "last_data",
        "paused",
        "remote_ended",
        "req_trailers",
        "stream_id",
        "trusted",
    )

    def __init__(self, conn: H2Connection, stream_id: int, trusted: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.trusted = trusted
        self.exchange: Exchange | None = None
        self.ended = False  # our END_STREAM (or RST_STREAM) is out
        self.remote_ended = False
        self.done = False  # the exchange has finished with us
        self.paused = False  # the exchange wants no more request body for now
        self.held = 0  # request body bytes received but not yet acknowledged
        self.last_data = conn.now()
        self.req_trailers: Headers | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._held = b""  # the last body piece, sent with END_STREAM if the response ends this round
        self._end_pending = False
        self._trailers: Headers | None = None
        self._blocked = False  # the exchange was told to stop reading its upstream

    # ------------------------------------------------------------------ Downstream
    def forward_head(
        self, status: int, headers: Headers, no_body: bool, request_id: str, request_id_header: bytes
    ) -> bool:
        return forward_head_fields(self, status, headers, no_body, request_id, request_id_header)

    def send_head(self, status: int, headers: Headers, length: int | None, no_body: bool, close: bool) -> None:
        conn = self.conn
        out: Headers = [(b":status", STATUS.get(status) or str(status).encode())]
        seen_hsts = False
        for name, value in headers:
            lname = name.lower()
            if lname in CONNECTION_SPECIFIC or lname[:1] == b":":
                continue
            if lname == HSTS:
                seen_hsts = True
            out.append((lname, value))
        if length is not None and status != 204 and status >= 200:
            out.append((b"content-length", str(length).encode()))
        if conn.hsts is not None and not seen_hsts:
            out.append((HSTS, conn.hsts))
        if self.ended:
            return
        try:
            conn.h2.send_headers(self.stream_id, out, end_stream=no_body)
        except h2.exceptions.H2Error:
            self._lost()
            return
        if no_body:
            self.ended = True
        conn.mark()

    def send_body(self, data: bytes) -> None:
        if self.ended or not data:
            return
        if self._pending:
            self._pending.append(data)
            return
        # the piece waits for the end of this round of callbacks: a response that ends meanwhile
        # leaves as one DATA frame with END_STREAM, not a DATA frame and an empty one
        if self._held:
            self.push_held()
            if self._pending:
                self._pending.append(data)
                return
        else:
            self.conn.hold(self)
        self._held = data

    def push_held(self) -> None:
        """Send the piece held back: the round is over, or more body follows it."""
        held, self._held = self._held, b""
        if held and not self.ended:
            rest = self.conn.send_data(self, held)
            if rest:
                self._pending.append(rest)
                self._update_block()

    def flush(self) -> None:
        self.conn.write_out()

    def send_end(self, trailers: Headers | None) -> None:
        if self.ended:
            return
        held, self._held = self._held, b""
        if held:  # (never held while data is pending)
            rest = self.conn.send_data(self, held, end=not trailers)
            if rest:
                self._pending.append(rest)
                self._update_block()
            elif not trailers:
                self.ended = True
                self._maybe_release()
                return
        if self._pending:
            self._end_pending = True
            self._trailers = trailers
            return
        self._finish_response(trailers)

    def _finish_response(self, trailers: Headers | None) -> None:
        conn = self.conn
        try:
            if trailers:
                clean = [(n.lower(), v) for n, v in trailers if n.lower() not in CONNECTION_SPECIFIC and n[:1] != b":"]
                conn.h2.send_headers(self.stream_id, clean, end_stream=True)
            else:
                conn.h2.end_stream(self.stream_id)
        except h2.exceptions.H2Error:
            self._lost()
            return
        self.ended = True
        conn.mark()
        self._maybe_release()

    def send_continue(self) -> None:
        if not self.ended:
            try:
                self.conn.h2.send_headers(self.stream_id, [(b":status", b"100")])
            except h2.exceptions.H2Error:
                return
            self.conn.mark()

    def send_switch(self, headers: Headers) -> None:
        self.abort()  # no protocol upgrade inside an HTTP/2 stream (the exchange never asks)

    def tunnel_write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.held:
                held, self.held = self.held, 0
                self.conn.acknowledge(self.stream_id, held)

    def exchange_done(self, keep_alive: bool) -> None:
        self.done = True
        if not keep_alive and not self.remote_ended and self.ended:
            # answered before the request body was all received: the client may stop sending it
            self.conn.reset(self, h2.errors.ErrorCodes.NO_ERROR)
        self._maybe_release()

    def abort(self) -> None:
        self._held = b""
        self._pending.clear()
        self._end_pending = False
        if not self.ended:
            self.conn.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self._maybe_release()

    # ------------------------------------------------------------------ flow control
    def window_opened(self) -> None:
        """The client granted window: send what waits."""
        pending = self._pending
        while pending and not self.ended:
            rest = self.conn.send_data(self, pending[0])
            if rest:
                pending[0] = rest
                break
            pending.popleft()
        if not pending and self._end_pending:
            self._end_pending = False
            self._finish_response(self._trailers)
        self._update_block()

    def _update_block(self) -> None:
        blocked = bool(self._pending) or self.conn.write_paused
        if blocked != self._blocked and self.exchange is not None and not self.exchange.finished:
            self._blocked = blocked
            if blocked:
                self.exchange.downstream_write_paused()
            else:
                self.exchange.downstream_write_resumed()

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def _lost(self) -> None:
        """The stream is gone on the h2 side (the client reset it)."""
        self.ended = True
        self._held = b""
        self._pending.clear()
        self._end_pending = False
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.done and self.ended:
            self.conn.release(self)
