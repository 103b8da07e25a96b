"""The HTTP/2 client connection (RFC 9113) on the `h2` state machine.

One `H2Connection` per client connection multiplexes streams; each stream is an `H2Stream`,
a `Downstream` driven by the same `Exchange` as an HTTP/1.1 request. The connection enforces
flow control both ways (a response waits for the client's window, and its upstream stops
being read meanwhile; request bodies are acknowledged only while the exchange wants more),
the SETTINGS limits, GOAWAY on drain and reload, and a rapid-reset budget (CVE-2023-44487).
CONTINUATION floods and HPACK bombs are refused by `h2` itself (a bounded CONTINUATION
backlog and the decoder's maximum header list size).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack

from portcullis.engine.context import RequestContext
from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.exchange import Exchange
from portcullis.http.hosts import host_name
from portcullis.server.h2_fields import CachingDecoder, RequestFields, request_fields, trailer_fields
from portcullis.server.h2_stream import H2Stream
from portcullis.server.hpack_static import StaticEncoder

if TYPE_CHECKING:
    from portcullis.config.schema import Http2
    from portcullis.server.edge import ListenerEdge
    from portcullis.tls.certs import ClientIdentity
    from portcullis.worker.runtime import ListenerRuntime, Runtime


class H2Connection(asyncio.Protocol):
    __slots__ = (
        "_closing",
        "_connection_window",
        "_goaway_sent",
        "_held",
        "_listener",
        "_max_resets",
        "_reset_times",
        "_reset_window",
        "_runtime",
        "_write_scheduled",
        "client_cert",
        "client_ip",
        "client_port",
        "deadline",
        "edge",
        "h2",
        "hsts",
        "streams",
        "transport",
        "trusted",
        "write_paused",
    )

    def __init__(self, runtime: Runtime, listener: ListenerRuntime, edge: ListenerEdge | None) -> None:
        self._runtime = runtime
        self._listener = listener
        self.edge = edge
        self.hsts = edge.hsts if edge is not None else None
        settings: Http2 = runtime.config.server.http2
        # inbound heads are checked in one pass by h2_fields (h2's own checks cost far more); outbound
        # ones are built here from already-clean fields: lower-case, no connection-specific field
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, normalize_inbound_headers=False,  # (cookies are joined here)
            validate_inbound_headers=False,
        )  # fmt: skip
        conn = self.h2 = h2.connection.H2Connection(config=config)
        conn.encoder = StaticEncoder(runtime.request_id_header_lower)  # type: ignore[assignment]
        conn.decoder = CachingDecoder()
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # the decoder enforces the limit from the first header block, not only once SETTINGS is acked
        conn.decoder.max_header_list_size = settings.max_header_list_size
        self._max_resets = settings.max_resets
        self._reset_window = settings.reset_window
        self._reset_times: collections.deque[float] = collections.deque()
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_port = 0
        self.client_cert: ClientIdentity | None = None
        self.trusted = False
        self.deadline = 0.0
        self.write_paused = False
        self._closing = False
        self._goaway_sent = False
        self._write_scheduled = False
        self._held: list[H2Stream] = []  # streams holding back a body piece until write_out
        self._connection_window = settings.connection_window

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip, self.client_port = peer[0], peer[1]
        runtime = self._runtime
        self.trusted = runtime.is_trusted(self.client_ip)
        if self.edge is not None:
            self.client_cert = self.edge.client_identity(transport)
        self.deadline = runtime.watchdog.now + runtime.client_header_timeout
        runtime.connection_opened(self)
        self.h2.initiate_connection()
        extra = self._connection_window - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.write_out()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error code
            if isinstance(exc.__cause__, hpack.HPACKError) and not isinstance(
                exc, h2.exceptions.DenialOfServiceError
            ):
                self._compression_error()
            self.write_out()
            self._close()
            return
        for ev in events:
            self._event(ev)  # (ignored once an event closed the connection)
        self.write_out()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.deadline = 0.0
        runtime = self._runtime
        runtime.connection_closed(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.ended = True
            if stream.exchange is not None:
                stream.exchange.client_gone()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream._update_block()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream._update_block()

    def on_deadline(self) -> None:
        if not self.streams:
            self._goaway()
            self._close()
            return
        # request bodies that stalled longer than client_body: 408 (or a reset if the answer began)
        runtime = self._runtime
        now, limit = runtime.watchdog.now, runtime.client_body_timeout
        waiting = [s for s in self.streams.values() if not s.remote_ended and not s.done]
        for stream in waiting:
            if now - stream.last_data >= limit and stream.exchange is not None:
                stream.exchange.fail(ProxyError(ErrorKind.CLIENT_TIMEOUT, "request body stalled"))
        self.write_out()
        receiving = [s.last_data for s in self.streams.values() if not s.remote_ended and not s.done]
        self.deadline = min(receiving) + limit if receiving else 0.0

    def now(self) -> float:
        return self._runtime.watchdog.now

    # ================================================================== events
    def _event(self, ev: h2.events.Event) -> None:
        if self._closing:
            return
        if isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            self._data(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.remote_ended = True
                if stream.exchange is not None:
                    stream.exchange.request_end(stream.req_trailers)
        elif isinstance(ev, h2.events.TrailersReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                trailers = trailer_fields(ev.headers)
                if trailers is None:
                    self._malformed(stream)
                else:
                    stream.req_trailers = trailers
        elif isinstance(ev, h2.events.StreamReset):
            self._reset_by_client(ev)
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id:
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream.window_opened()
            else:
                self._window_opened()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                self._window_opened()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._close()

    def _window_opened(self) -> None:
        for stream in list(self.streams.values()):
            if stream.waiting:
                stream.window_opened()

    def _request(self, ev: h2.events.RequestReceived) -> None:
        stream_id = ev.stream_id
        if self._goaway_sent:
            self.reset_id(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        # h2 leaves the checks to us (see h2_fields): nothing malformed or ambiguous reaches an upstream
        fields = request_fields(ev.headers, self._runtime.request_id_header_lower)
        if not isinstance(fields, RequestFields):
            self.reset_id(stream_id, fields)
            return
        method, path, authority, headers = fields.method, fields.path, fields.authority, fields.headers
        length, request_id = fields.length, fields.request_id
        edge = self.edge
        if edge is not None and edge.strip:
            headers = edge.with_identity(headers, self.client_cert)
        ended = ev.stream_ended is not None
        stream = H2Stream(self, stream_id, self.trusted)
        self.streams[stream_id] = stream
        runtime = self._runtime
        self.deadline = runtime.watchdog.now + runtime.client_body_timeout  # see on_deadline
        listener = self._listener
        host = self._host_name(authority)
        ctx = RequestContext(
            method.decode("latin-1"), path, headers, "2", host, self.client_ip, self.client_port,
            listener.scheme, listener.name, runtime.clock(), authority or None, None, request_id,
        )  # fmt: skip
        ctx.client_cert = self.client_cert
        if ended:
            req_length, chunked = None, False
        elif length is not None:
            req_length, chunked = length, False
        else:
            req_length, chunked = None, True  # the upstream gets it chunked
        exchange = Exchange(stream, ctx, runtime, req_length, chunked, False, None)
        stream.exchange = exchange
        exchange.begin(listener.router)  # StreamEnded, among the events that follow, ends the request

    def _host_name(self, authority: bytes) -> str:
        return host_name(authority) if authority else self._listener.host

    def _data(self, ev: h2.events.DataReceived) -> None:
        stream = self.streams.get(ev.stream_id)
        size = ev.flow_controlled_length
        if stream is None or stream.exchange is None or stream.done:
            self.acknowledge(ev.stream_id, size)
            return
        stream.last_data = self._runtime.watchdog.now
        if ev.data:
            stream.exchange.request_body(ev.data)
        if stream.paused:
            stream.held += size
        else:
            self.acknowledge(ev.stream_id, size)

    def _malformed(self, stream: H2Stream) -> None:
        """A stream error on a request already under way: reset it, end its exchange."""
        self.streams.pop(stream.stream_id, None)
        self.reset(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        if stream.exchange is not None:
            stream.exchange.client_gone()

    def _reset_by_client(self, ev: h2.events.StreamReset) -> None:
        stream = self.streams.pop(ev.stream_id, None)
        if stream is not None:
            stream.ended = True
            if stream.exchange is not None:
                stream.exchange.client_gone()
        if not ev.remote_reset:
            return
        now = self._runtime.watchdog.loop.time()
        times = self._reset_times
        times.append(now)
        while times and times[0] < now - self._reset_window:
            times.popleft()
        if len(times) > self._max_resets:
            # rapid reset (CVE-2023-44487): this client makes us start work it cancels at once
            self._runtime.stats.reject("h2_rapid_reset")
            self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._close()

    # ================================================================== for the streams
    def send_data(self, stream: H2Stream, data: bytes, end: bool = False) -> bytes:
        """Send as much of `data` as the windows allow (the last frame with END_STREAM if `end` and it
        all fits); what is left."""
        conn = self.h2
        stream_id = stream.stream_id
        try:
            window = conn.local_flow_control_window(stream_id)
            frame = conn.max_outbound_frame_size
            view = memoryview(data)
            sent = 0
            total = len(data)
            while sent < total and window > 0:
                n = min(window, frame, total - sent)
                last = end and sent + n == total
                conn.send_data(stream_id, view[sent : sent + n].tobytes() if n != total else data, end_stream=last)
                sent += n
                window -= n
        except h2.exceptions.H2Error:
            stream._lost()
            return b""
        self.mark()
        return data[sent:] if sent < total else b""

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self._closing:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.H2Error:
                return
            self.mark()

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        stream.ended = True
        self.reset_id(stream.stream_id, code)

    def reset_id(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(stream_id, code)
        self.mark()

    def release(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if not self.streams and not self._closing:
            if self._goaway_sent:
                self.write_out()
                self._close()
            else:
                runtime = self._runtime
                idle = 1.0 if runtime.retired else runtime.keepalive_timeout
                self.deadline = runtime.watchdog.now + idle

    def mark(self) -> None:
        """Output is waiting in the h2 buffer: write it once this round of callbacks is over."""
        if not self._write_scheduled and not self._closing:
            self._write_scheduled = True
            self._runtime.watchdog.loop.call_soon(self.write_out)

    def hold(self, stream: H2Stream) -> None:
        """`stream` holds back a body piece: write_out sends it if the response has not ended by then."""
        self._held.append(stream)
        self.mark()

    def write_out(self) -> None:
        if self._held:
            held, self._held = self._held, []
            for stream in held:
                stream.push_held()
        self._write_scheduled = False  # (after the pushes: they need no second round)
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _compression_error(self) -> None:
        """RFC 9113 4.3: a header block that cannot be decoded is a COMPRESSION_ERROR (h2 says
        PROTOCOL_ERROR): rewrite the code of the GOAWAY it has just queued (the last 17 bytes)."""
        data = self.h2.data_to_send()
        if len(data) >= 17 and data[-17:-14] == b"\x00\x00\x08" and data[-14] == 0x7:
            data = data[:-4] + b"\x00\x00\x00\x09"
        if data and self.transport is not None:
            self.transport.write(data)

    # ================================================================== closing
    def _goaway(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if self._goaway_sent or self._closing:
            return
        self._goaway_sent = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection(error_code=code, last_stream_id=self.h2.highest_inbound_stream_id)
        self.write_out()

    def close_if_idle(self) -> bool:
        """Drain and reload: announce GOAWAY; close once no stream is left. True if closed."""
        self._goaway()
        if not self.streams:
            self._close()
            return True
        return False

    def _close(self) -> None:
        if self._closing:
            return
        self.write_out()
        self._closing = True
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.close()
