"""One HTTP/2 connection to a peer (h2c with prior knowledge, or TLS with ALPN h2), shared by many
exchanges: each request is a stream (`H2UpstreamStream`, upstream/h2_stream.py), the exchange's link.

The connection opens streams up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS (its pool opens
another connection beyond that), sends request data no faster than the peer's windows allow, and
grants the peer window only as the clients take the response data. A GOAWAY lets the streams the
peer took finish and refuses the others; a lost connection or protocol error fails every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.upstream.h2_stream import H2UpstreamStream

if TYPE_CHECKING:
    from hpack.struct import Header
    from hyperframe.frame import Frame, GoAwayFrame

    from portcullis.engine.messages import Headers
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.h2_pool import H2Pool

STREAM_WINDOW = 256 * 1024
"""Response bytes a stream may have in flight: what a slow client can leave held in the proxy."""
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_STREAMS = 256
"""Streams on one connection at most, whatever the peer allows."""
MAX_HEADER_LIST = 64 * 1024


class _ClientH2(h2.connection.H2Connection):
    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        # h2 closes the whole connection at any GOAWAY, but RFC 9113 6.8 lets the streams the peer
        # took (up to last_stream_id) complete: a graceful GOAWAY only stops new streams here
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _fields(headers: list[Header]) -> Headers:
    # header_encoding=None: h2 hands out bytes
    return [(n, v) for n, v in headers]


class H2UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_touched",
        "_write_scheduled",
        "active",
        "closed",
        "deadline",
        "going_away",
        "h2",
        "pool",
        "ready",
        "scheme",
        "streams",
        "transport",
        "usable",
        "watchdog",
        "write_paused",
    )

    def __init__(self, pool: H2Pool, watchdog: Watchdog, scheme: bytes) -> None:
        self.pool = pool
        self.watchdog = watchdog
        self.scheme = scheme
        # outbound fields are built clean by forwarding.upstream_request_fields; inbound ones are checked
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )  # fmt: skip
        conn = self.h2 = _ClientH2(config=config)
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        conn.decoder.max_header_list_size = MAX_HEADER_LIST
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpstreamStream] = {}
        """Open streams, by id."""
        self.active = 0
        """Links handed out and not released yet (a stream is counted before its HEADERS leave)."""
        self.ready: asyncio.Future[None] = watchdog.loop.create_future()
        """Done when the peer's SETTINGS arrived: it speaks HTTP/2 and its limits are known."""
        self.usable = False
        self.going_away = False
        self.closed = False
        self.write_paused = False
        self.deadline = 0.0
        self._write_scheduled = False
        self._touched: list[H2UpstreamStream] = []

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.watchdog.watch(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self._not_ready("the peer did not agree to HTTP/2 by ALPN")
            transport.close()
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.write_out()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the error code
            self._broken(f"HTTP/2 protocol error from the peer: {exc}")
            return
        for ev in events:
            self._event(ev)  # (ignored once an event closed the connection)
        touched = self._touched
        if touched:
            # like the HTTP/1.1 connection after each read: nothing waits in the client codecs
            self._touched = []
            for stream in dict.fromkeys(touched):
                if stream.exchange is not None:
                    stream.exchange.flush_downstream()
        self.write_out()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.usable = False
        self.deadline = 0.0
        self.watchdog.unwatch(self)
        self.pool.discard(self)
        self._not_ready("the connection closed before the peer's HTTP/2 settings")
        detail = f"upstream closed the connection: {exc}" if exc else "upstream closed the connection"
        self._fail_streams(lambda _: ProxyError(ErrorKind.UPSTREAM_RESET, detail))

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.update_block()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.window_opened()

    def on_deadline(self) -> None:
        """Idle longer than the pool's idle timeout."""
        if not self.active:
            self.close()

    # ================================================================== events
    def _event(self, ev: h2.events.Event) -> None:
        if self.closed:
            return
        if isinstance(ev, h2.events.DataReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.on_data(ev.data or b"", ev.flow_controlled_length or 0)
                self._touched.append(stream)
            else:  # a stream we let go of: its bytes still count against the connection window
                self.acknowledge(ev.stream_id or 0, ev.flow_controlled_length or 0)
        elif isinstance(ev, h2.events.ResponseReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.on_response(_fields(ev.headers), ev.stream_ended is not None)
                self._touched.append(stream)
        elif isinstance(ev, h2.events.TrailersReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.on_trailers(_fields(ev.headers))
        elif isinstance(ev, h2.events.StreamEnded):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.got_bytes = True  # (100 Continue and the like are the proxy's to send, not the peer's)
        elif isinstance(ev, h2.events.StreamReset):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.on_reset(h2.errors.ErrorCodes(ev.error_code) if ev.error_code is not None else None)
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id:
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream.window_opened()
            else:
                self._windows_opened()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            if not self.ready.done():
                self.usable = True
                self.ready.set_result(None)
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                self._windows_opened()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._goaway(ev)

    def _windows_opened(self) -> None:
        for stream in list(self.streams.values()):
            stream.window_opened()

    def _goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        """The peer takes no new streams; those above `last_stream_id` it never processed."""
        self.going_away = True
        self.usable = False
        last = ev.last_stream_id or 0
        graceful = ev.error_code == h2.errors.ErrorCodes.NO_ERROR
        code = getattr(ev.error_code, "name", ev.error_code)

        def error(stream_id: int) -> ProxyError | None:
            if stream_id > last:
                return ProxyError(ErrorKind.UPSTREAM_REFUSED, "the peer sent GOAWAY before taking the stream")
            if graceful:
                return None  # it completes
            return ProxyError(ErrorKind.UPSTREAM_RESET, f"the peer ended the connection with GOAWAY {code}")

        self._fail_streams(error)
        if not graceful or not self.active:
            self.close()

    # ================================================================== for the streams and the pool
    @property
    def capacity(self) -> int:
        return min(self.h2.remote_settings.max_concurrent_streams, MAX_STREAMS)

    def has_room(self) -> bool:
        return self.usable and self.active < self.capacity

    def new_stream(self) -> H2UpstreamStream:
        self.active += 1
        self.deadline = 0.0
        return H2UpstreamStream(self)

    def open(self, stream: H2UpstreamStream, fields: Headers, end: bool) -> int:
        """Send a stream's HEADERS; its id, or 0 when the connection cannot take it."""
        if not self.usable:
            return 0
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, fields, end_stream=end)
        except h2.exceptions.NoAvailableStreamIDError:
            self.going_away = True  # every stream id is used: new streams go to a new connection
            self.usable = False
            return 0
        except h2.exceptions.H2Error:
            return 0
        self.streams[stream_id] = stream
        self.mark()
        return stream_id

    def send_data(self, stream_id: int, data: bytes) -> bytes:
        """Send as much of `data` as the peer's windows allow; what is left."""
        conn = self.h2
        try:
            window = conn.local_flow_control_window(stream_id)
            frame = conn.max_outbound_frame_size
            total = len(data)
            sent = 0
            view = memoryview(data)
            while sent < total and window > 0:
                n = min(window, frame, total - sent)
                conn.send_data(stream_id, view[sent : sent + n].tobytes() if n != total else data)
                sent += n
                window -= n
        except h2.exceptions.H2Error:
            return b""  # the stream is gone: its reset or the connection's loss tells the exchange
        if sent:
            self.mark()
        return data[sent:] if sent < total else b""

    def end_stream(self, stream_id: int, trailers: Headers | None) -> None:
        try:
            if trailers:
                self.h2.send_headers(stream_id, [(n.lower(), v) for n, v in trailers], end_stream=True)
            else:
                self.h2.end_stream(stream_id)
        except h2.exceptions.H2Error:
            return
        self.mark()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The client took `size` bytes of a stream's response: the peer may send that much more."""
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except (h2.exceptions.H2Error, ValueError):
                return
            self.mark()

    def reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.mark()

    def released(self, stream: H2UpstreamStream) -> None:
        """A link is done with its stream."""
        self.active -= 1
        if stream.stream_id and self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if not self.active:
            if self.going_away:
                self.close()
            elif not self.closed:
                self.pool.became_idle(self, self.watchdog.now)

    def mark(self) -> None:
        """Frames wait in the h2 buffer: write them once this round of callbacks is over."""
        if not self._write_scheduled and not self.closed:
            self._write_scheduled = True
            self.watchdog.loop.call_soon(self.write_out)

    def write_out(self) -> None:
        self._write_scheduled = False
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        """GOAWAY and close; streams still open fail when the connection is lost."""
        if self.closed:
            return
        self.usable = False
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection()
        self.write_out()
        self.closed = True  # (its streams fail when the connection is lost)
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.close()

    # ================================================================== internals
    def _not_ready(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # (retrieved: nobody may be waiting any more)

    def _broken(self, reason: str) -> None:
        self.write_out()
        self._not_ready(reason)
        self.usable = False
        self._fail_streams(lambda _: ProxyError(ErrorKind.UPSTREAM_PROTOCOL, reason))
        if self.transport is not None:
            self.transport.close()

    def _fail_streams(self, error_of: Callable[[int], ProxyError | None]) -> None:
        """Fail the open streams `error_of` their id gives an error for."""
        for stream_id, stream in list(self.streams.items()):
            error = error_of(stream_id)
            if error is not None:
                stream.fail(error, reset=False)
