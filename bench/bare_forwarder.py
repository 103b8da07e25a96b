#!/usr/bin/env python3
"""The floor for scale: the least an asyncio HTTP/1.1 forwarder can do, with no features.

uvloop and httptools, one upstream with a pool of keep-alive connections, headers passed
through as they came (only Connection is rewritten), bodies by Content-Length only, no
timeouts, no error pages, no limits. It is not a proxy anyone should run; it shows what
bare Python can reach on this machine, so that Portcullis's figures can be read against it:

    python3 bench/run.py --proxy-cmd "python3 bench/bare_forwarder.py {port} {backend_port}" --label bare
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

import httptools
import uvloop

HOST = "127.0.0.1"
CONNECTING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the backend; answers go to the client that asked."""

    def __init__(self, pool: deque[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.head: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None:
            self.client.fail()

    def on_status(self, status: bytes) -> None:
        self.head = [b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), status)]
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"connection":
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.pool.append(self)
        if client is not None:
            client.respond(b"".join(self.head), b"".join(self.body))


class Client(asyncio.Protocol):
    """One downstream connection; requests are forwarded one at a time."""

    def __init__(self, pool: deque[Upstream], backend_port: int) -> None:
        self.pool = pool
        self.backend_port = backend_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.keep_alive = True
        self.head: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail()

    def on_url(self, url: bytes) -> None:
        self.url = url
        self.head = []
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"connection":
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        request = b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, self.url, b"".join(self.head), b"".join(self.body))
        if self.pool:
            self.send(self.pool.pop(), request)
        else:
            task = asyncio.ensure_future(self.connect(request))
            CONNECTING.add(task)
            task.add_done_callback(CONNECTING.discard)

    async def connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Upstream(self.pool), HOST, self.backend_port)
        except OSError:
            self.fail()
            return
        self.send(upstream, request)

    def send(self, upstream: Upstream, request: bytes) -> None:
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(request)

    def respond(self, head: bytes, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        keep = self.keep_alive
        self.transport.write(head + (b"\r\n" if keep else b"Connection: close\r\n\r\n") + body)
        if not keep:
            self.transport.close()

    def fail(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()


async def serve(port: int, backend_port: int) -> None:
    pool: deque[Upstream] = deque()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool, backend_port), HOST, port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
