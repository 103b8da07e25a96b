"""The last write before a close is corked, so its last segment and the FIN leave as one packet.

The client transport here writes into a real loopback TCP socket and notes whether the socket
was corked at each write; nothing else about the connection is faked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from portcullis.server.h1 import H1Connection
from portcullis.upstream.connection import UpstreamConnection
from portcullis.worker.runtime import Runtime

from .transports import Transport, runtime_with_pooled_upstream

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")

HOST = b"Host: example.test\r\n"


class CorkNotingTransport(Transport):
    """Writes go to a real TCP socket; each write notes whether the socket was corked."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(("127.0.0.1", 40000))
        self.sock = sock
        self.corked_at_write: list[bool] = []

    def write(self, data: bytes) -> None:
        self.corked_at_write.append(bool(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)))
        self.sock.sendall(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name, default)


@dataclasses.dataclass
class Setup:
    runtime: Runtime
    upstream: UpstreamConnection
    server_side: socket.socket
    client_side: socket.socket


@pytest.fixture
def setup() -> Iterator[Setup]:
    loop = asyncio.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    client_side = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    try:
        runtime, upstream, _ = runtime_with_pooled_upstream(loop)
        yield Setup(runtime, upstream, server_side, client_side)
    finally:
        server_side.close()
        client_side.close()
        loop.close()


def exchange(setup: Setup, request: bytes, *response_pieces: bytes) -> tuple[CorkNotingTransport, bytes]:
    """One request through a client connection; the upstream's response arrives in pieces."""
    transport = CorkNotingTransport(setup.server_side)
    conn = H1Connection(setup.runtime, setup.runtime.listeners["web"])
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(request)
    for piece in response_pieces:
        setup.upstream.data_received(piece)
        setup.runtime.watchdog.outbox.flush()  # the end of the loop's turn
    setup.server_side.shutdown(socket.SHUT_WR)  # (the transport's close is only noted)
    setup.client_side.settimeout(5)
    received = b""
    while chunk := setup.client_side.recv(65536):
        received += chunk
    return transport, received


CLOSE = b"GET /x HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
KEEP = b"GET /x HTTP/1.1\r\n" + HOST + b"\r\n"


def test_a_closing_response_in_one_piece_is_written_corked(setup: Setup) -> None:
    transport, received = exchange(setup, CLOSE, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert received.startswith(b"HTTP/1.1 200") and b"Connection: close" in received
    assert transport.corked_at_write == [True]
    assert transport.closed


def test_only_the_last_piece_of_a_streamed_response_is_corked(setup: Setup) -> None:
    """Earlier pieces go out at once: a cork would hold a small one back for up to 200 ms."""
    transport, received = exchange(
        setup, CLOSE, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab", b"cd", b"ok"
    )
    assert received.endswith(b"\r\n\r\nabcdok")
    assert transport.corked_at_write == [False, False, True]


def test_the_last_chunk_of_a_chunked_closing_response_is_corked(setup: Setup) -> None:
    transport, received = exchange(
        setup, CLOSE, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", b"0\r\n\r\n"
    )
    assert received.endswith(b"2\r\nok\r\n0\r\n\r\n")
    assert transport.corked_at_write == [False, True]


def test_a_response_without_body_is_corked(setup: Setup) -> None:
    transport, received = exchange(setup, CLOSE, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 204")
    assert transport.corked_at_write == [True]


def test_a_keep_alive_response_is_never_corked(setup: Setup) -> None:
    transport, received = exchange(setup, KEEP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert received.endswith(b"ok")
    assert transport.corked_at_write == [False]
    assert not transport.closed
