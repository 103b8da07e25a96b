"""A connection closed while the client is still sending its body lingers: the answer ends with
a FIN, what still comes is dropped, and the socket closes when the client does or after
LINGER_TIME. A transport that cannot half-close (TLS) closes at once, as before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from portcullis.config import load_config_text
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.server.h1 import LINGER_TIME, H1Connection
from portcullis.worker.build import build_runtime

from .transports import Transport, runtime_with_pooled_upstream

CONFIG = """
listeners: [{name: web, listen: 127.0.0.1:8080}]
server: {limits: {max_body: 10}}
upstreams: {app: {peers: [{url: http://127.0.0.1:9}]}}
routes: [{name: all, upstream: app}]
"""
TOO_BIG = b"POST /x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 100\r\n\r\n" + b"a" * 5


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connection(loop: asyncio.AbstractEventLoop, half_close: bool) -> tuple[H1Connection, Transport, Watchdog]:
    watchdog = Watchdog(loop)
    runtime = build_runtime(load_config_text(CONFIG, "test.yaml", "."), Services(), watchdog)
    client = Transport(("127.0.0.1", 40000), half_close=half_close)
    conn = H1Connection(runtime, runtime.listeners["web"])
    conn.connection_made(client)  # type: ignore[arg-type]
    return conn, client, watchdog


def test_a_refused_body_is_answered_then_drained_until_the_client_closes(loop: asyncio.AbstractEventLoop) -> None:
    conn, client, watchdog = connection(loop, half_close=True)
    conn.data_received(TOO_BIG)
    watchdog.outbox.flush()
    answer = b"".join(client.written)
    assert answer.startswith(b"HTTP/1.1 413 ") and client.eof_written and not client.closed
    conn.data_received(b"b" * 50)  # the rest of the body: read and dropped
    assert b"".join(client.written) == answer
    assert conn.eof_received() is False  # the client closed its side: the transport may close
    assert conn.deadline == watchdog.now + LINGER_TIME
    conn.on_deadline()  # a client that never closes is closed when the time is up
    assert client.closed


def test_without_a_half_close_the_connection_closes_at_once(loop: asyncio.AbstractEventLoop) -> None:
    conn, client, watchdog = connection(loop, half_close=False)
    conn.data_received(TOO_BIG)
    watchdog.outbox.flush()
    assert b"".join(client.written).startswith(b"HTTP/1.1 413 ") and client.closed and not client.eof_written


def test_a_request_read_whole_closes_at_once(loop: asyncio.AbstractEventLoop) -> None:
    runtime, upstream, _ = runtime_with_pooled_upstream(loop)
    client = Transport(("127.0.0.1", 40000))
    conn = H1Connection(runtime, runtime.listeners["web"])
    conn.connection_made(client)  # type: ignore[arg-type]
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    runtime.watchdog.outbox.flush()
    assert b"".join(client.written).endswith(b"ok")
    assert client.closed and not client.eof_written  # nothing more is coming: no need to linger
