"""The HTTP/2 upstream connection and its streams (upstream/h2_connection.py, h2_stream.py) against a
peer played by the `h2` state machine: no sockets, every frame handed over by the test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from portcullis.engine.context import RequestContext
from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.watchdog import Watchdog
from portcullis.upstream.h2_connection import STREAM_WINDOW, H2UpstreamConnection
from portcullis.upstream.h2_pool import H2Pool
from portcullis.upstream.h2_stream import H2UpstreamStream


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Exchange:
    """Records what the link tells the exchange."""

    def __init__(self, chunked: bool = True, length: int | None = None) -> None:
        self.req_chunked = chunked
        self.req_length = length
        self.finished = False
        self.ctx = RequestContext("POST", b"/svc/Call", [(b"content-type", b"application/grpc")], "2", "a.test",
                                  "127.0.0.1", 5000, "http", "web", 0.0, b"a.test")  # fmt: skip
        self.ctx.request_id = "rid-1"
        self.ds = SimpleNamespace(trusted=False)
        self.runtime = SimpleNamespace(request_id_header_lower=b"x-request-id")
        self.events: list[tuple[Any, ...]] = []
        self.paused = False

    def upstream_head(self, status: int, headers: Any, keep_alive: bool, ended: bool = False) -> None:
        self.events.append(("head", status, headers, ended))

    def upstream_body(self, chunk: bytes) -> None:
        self.events.append(("body", chunk))

    def upstream_complete(self, trailers: Any, reusable: bool) -> None:
        self.events.append(("complete", trailers))

    def upstream_failed(self, error: ProxyError) -> None:
        self.events.append(("failed", error.kind))

    def flush_downstream(self) -> None:
        pass

    def upstream_write_paused(self) -> None:
        self.paused = True

    def upstream_write_resumed(self) -> None:
        self.paused = False


class _Peer:
    """The connection under test and a peer on the h2 state machine, wired by hand."""

    def __init__(self, loop: asyncio.AbstractEventLoop, initial_window: int = 65535) -> None:
        self.transport = _Transport()
        self.conn = H2UpstreamConnection(H2Pool(), Watchdog(loop), b"http")
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.server.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window}
        )
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.server.initiate_connection()
        self.to_peer()
        self.to_proxy()
        assert self.conn.ready.done() and self.conn.usable

    def to_peer(self) -> list[h2.events.Event]:
        self.conn.write_out()
        data = bytes(self.transport.out)
        self.transport.out.clear()
        return self.server.receive_data(data) if data else []

    def to_proxy(self) -> None:
        data = self.server.data_to_send()
        if data:
            self.conn.data_received(data)

    def open(self, exchange: _Exchange) -> H2UpstreamStream:
        link = self.conn.new_stream()
        link.bind(exchange, False, 5.0, 5.0)  # type: ignore[arg-type]
        link.send_head()
        return link


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_request_fields_and_trailers_reach_the_peer(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    exchange = _Exchange()
    link = peer.open(exchange)
    link.send_body(b"hello")
    link.send_end([(b"x-sum", b"1")])
    events = peer.to_peer()
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    fields = dict(request.headers)
    assert fields[b":path"] == b"/svc/Call" and fields[b"te"] == b"trailers"
    assert fields[b"x-request-id"] == b"rid-1" and b"content-length" not in fields
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert dict(trailers.headers) == {b"x-sum": b"1"}


def test_closed_peer_window_pauses_the_client(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop, initial_window=100)
    exchange = _Exchange()
    link = peer.open(exchange)
    link.send_body(b"x" * 300)
    link.send_end(None)
    assert exchange.paused  # 200 bytes wait for the peer's window
    events = peer.to_peer()
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 100
    assert not any(isinstance(e, h2.events.StreamEnded) for e in events)
    peer.server.increment_flow_control_window(1000, link.stream_id)
    peer.to_proxy()
    assert not exchange.paused
    events = peer.to_peer()
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 200
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_peer_gets_window_only_as_the_client_takes_the_response(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    exchange = _Exchange(chunked=False)
    link = peer.open(exchange)
    peer.to_peer()
    sid = link.stream_id
    link.pause_reading()  # the client is slow
    peer.server.send_headers(sid, [(b":status", b"200")])
    size = 200 * 1024
    for offset in range(0, size, 16384):
        peer.server.send_data(sid, b"y" * min(16384, size - offset))
    peer.to_proxy()
    assert sum(len(e[1]) for e in exchange.events if e[0] == "body") == size
    peer.to_peer()
    assert peer.server.local_flow_control_window(sid) == STREAM_WINDOW - size  # no window back yet
    link.resume_reading()
    peer.to_peer()
    assert peer.server.local_flow_control_window(sid) == STREAM_WINDOW


def test_trailers_only_answer(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    exchange = _Exchange(chunked=False)
    link = peer.open(exchange)
    peer.to_peer()
    peer.server.send_headers(link.stream_id, [(b":status", b"200"), (b"grpc-status", b"5")], end_stream=True)
    peer.to_proxy()
    head, complete = exchange.events
    assert head == ("head", 200, [(b"grpc-status", b"5"), (b"content-length", b"0")], True)
    assert complete == ("complete", None)


def test_response_trailers_are_passed(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    exchange = _Exchange(chunked=False)
    link = peer.open(exchange)
    peer.to_peer()
    peer.server.send_headers(link.stream_id, [(b":status", b"200")])
    peer.server.send_data(link.stream_id, b"msg")
    peer.server.send_headers(link.stream_id, [(b"grpc-status", b"0")], end_stream=True)
    peer.to_proxy()
    assert [e[0] for e in exchange.events] == ["head", "body", "complete"]
    assert exchange.events[-1] == ("complete", [(b"grpc-status", b"0")])


@pytest.mark.parametrize(
    ("code", "kind"),
    [(h2.errors.ErrorCodes.REFUSED_STREAM, ErrorKind.UPSTREAM_REFUSED),
     (h2.errors.ErrorCodes.CANCEL, ErrorKind.UPSTREAM_RESET)],
)  # fmt: skip
def test_reset_stream_fails_the_exchange(
    loop: asyncio.AbstractEventLoop, code: h2.errors.ErrorCodes, kind: ErrorKind
) -> None:
    peer = _Peer(loop)
    exchange = _Exchange()
    link = peer.open(exchange)
    peer.to_peer()
    peer.server.reset_stream(link.stream_id, code)
    peer.to_proxy()
    assert exchange.events == [("failed", kind)]
    assert peer.conn.active == 0 and link.done


def test_graceful_goaway_lets_taken_streams_finish(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    first, second = _Exchange(chunked=False), _Exchange(chunked=False)
    link1 = peer.open(first)
    peer.open(second)
    peer.to_peer()
    peer.server.close_connection(last_stream_id=link1.stream_id)
    peer.to_proxy()
    assert second.events == [("failed", ErrorKind.UPSTREAM_REFUSED)]  # never processed: retryable
    assert not peer.conn.has_room() and not peer.transport.closing
    # (the peer's h2 closed itself at its own GOAWAY: the rest of its answer is made by hand)
    frames = b"".join(_frame(link1.stream_id, kind) for kind in ("headers", "data"))
    peer.conn.data_received(frames)
    assert [e[0] for e in first.events] == ["head", "body", "complete"]
    link1.release()
    assert peer.transport.closing  # the last stream is done: the connection closes


def _frame(stream_id: int, kind: str) -> bytes:
    if kind == "headers":
        frame: Any = HeadersFrame(stream_id, flags=["END_HEADERS"])
        frame.data = hpack.Encoder().encode([(b":status", b"200")])
    else:
        frame = DataFrame(stream_id, flags=["END_STREAM"])
        frame.data = b"done"
    return bytes(frame.serialize())


def test_connection_loss_and_timeouts_fail_the_exchange(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    waiting = _Exchange()
    link = peer.open(waiting)
    peer.to_peer()
    link.on_deadline()
    assert waiting.events == [("failed", ErrorKind.UPSTREAM_TIMEOUT)]
    resets = [e for e in peer.to_peer() if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == h2.errors.ErrorCodes.CANCEL
    streaming = _Exchange()
    peer.open(streaming)
    peer.conn.connection_lost(None)
    assert streaming.events == [("failed", ErrorKind.UPSTREAM_RESET)]


def test_idle_connection_closes_after_the_idle_timeout(loop: asyncio.AbstractEventLoop) -> None:
    peer = _Peer(loop)
    pool = peer.conn.pool
    pool.conns.append(peer.conn)
    pool.idle_timeout = 30.0
    link = peer.open(_Exchange(chunked=False))
    assert pool.busy == 1 and pool.idle_count == 0 and peer.conn.deadline == 0.0
    pool.release(link, 100.0)
    assert pool.busy == 0 and pool.idle_count == 1
    assert peer.conn.deadline == peer.conn.watchdog.now + 30.0 and not peer.transport.closing
    peer.conn.on_deadline()
    assert peer.transport.closing
    again = _Peer(loop)
    again.conn.pool.max_idle = 0  # no connection is kept without streams
    again.conn.pool.conns.append(again.conn)
    again.conn.pool.release(again.open(_Exchange(chunked=False)), 0.0)
    assert again.transport.closing
