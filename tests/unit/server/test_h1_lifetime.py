"""A closed client connection is freed at once, not left for the garbage collector."""

from __future__ import annotations

import asyncio
import gc

from portcullis.server.h1 import H1Connection

from .transports import Transport, runtime_with_pooled_upstream

REQUEST = b"GET /x HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def live_connections() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is H1Connection)


def test_closed_connection_needs_no_collector() -> None:
    loop = asyncio.new_event_loop()
    try:
        runtime, upstream, _ = runtime_with_pooled_upstream(loop)

        gc.collect()
        gc.disable()
        try:
            before = live_connections()
            for _ in range(5):
                client = Transport(("127.0.0.1", 40000))
                conn = H1Connection(runtime, runtime.listeners["web"])
                conn.connection_made(client)  # type: ignore[arg-type]
                conn.data_received(REQUEST)
                upstream.data_received(RESPONSE)
                runtime.watchdog.outbox.flush()  # the end of the loop's turn
                assert client.closed and b"".join(client.written).endswith(b"ok")
                conn.connection_lost(None)
                del conn
            assert live_connections() == before
        finally:
            gc.enable()
    finally:
        loop.close()
