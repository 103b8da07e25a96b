"""A closed client connection is freed at once, not left for the garbage collector."""

from __future__ import annotations

import asyncio
import gc

from portcullis.config import load_config_text
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.server.h1 import H1Connection
from portcullis.upstream.connection import UpstreamConnection
from portcullis.worker.build import build_runtime

from .transports import Transport

CONFIG = """
listeners: [{name: web, listen: 127.0.0.1:8080}]
upstreams: {app: {peers: [{url: http://127.0.0.1:9}]}}
routes: [{name: all, upstream: app}]
"""
REQUEST = b"GET /x HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def live_connections() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is H1Connection)


def test_closed_connection_needs_no_collector() -> None:
    loop = asyncio.new_event_loop()
    try:
        runtime = build_runtime(load_config_text(CONFIG, "test.yaml", "."), Services(), Watchdog(loop))
        peer = runtime.upstreams["app"].peers[0]
        upstream = UpstreamConnection(peer.pool, runtime.watchdog)
        upstream.connection_made(Transport(("127.0.0.1", 9)))  # type: ignore[arg-type]
        peer.pool.release(upstream, 0)

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
