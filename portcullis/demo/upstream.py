"""A tiny HTTP/1.1 server that describes the request it received, so a newcomer can see the proxy work."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import httptools

_PAGE = """<!doctype html><html><head><title>Portcullis demo upstream</title></head>
<body><h1>Hello through Portcullis</h1>
<p>This page comes from the demo upstream behind the proxy. The request it received:</p>
<pre>{request}</pre></body></html>
"""


class DemoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        request = {
            "method": self.parser.get_method().decode(),
            "target": self.url.decode("latin-1"),
            "headers": dict(self.headers),
            "body_bytes": self.body_size,
        }
        accept = dict((k.lower(), v) for k, v in self.headers).get("accept", "")
        if "text/html" in accept:
            body = _PAGE.format(request=json.dumps(request, indent=2).replace("<", "&lt;")).encode()
            ctype = b"text/html; charset=utf-8"
        else:
            body = (json.dumps(request, indent=2) + "\n").encode()
            ctype = b"application/json"
        keep = self.parser.should_keep_alive()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nContent-Length: %d\r\nServer: portcullis-demo\r\n" % (
            ctype,
            len(body),
        )
        self.transport.write(head + (b"\r\n" if keep else b"Connection: close\r\n\r\n") + body)
        if not keep:
            self.transport.close()


async def start_demo_upstream(host: str = "127.0.0.1", port: int = 8081) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(DemoProtocol, host, port)
