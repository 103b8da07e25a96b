"""A small HTTP/1.1 server for the proxy's own endpoints (admin API, demo upstream).

Not the data path: requests are read whole (bounded) and answered by an async handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from portcullis.engine.errors import reason_phrase

log = logging.getLogger("portcullis")

MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class SimpleRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    client: str = ""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(slots=True)
class SimpleResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[SimpleRequest], Awaitable[SimpleResponse]]


class SimpleHTTPProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.queue: asyncio.Queue[SimpleRequest | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write_and_close(SimpleResponse(400, b'{"error": "malformed request"}\n'))

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.queue.put_nowait(
            SimpleRequest(
                self.parser.get_method().decode(),
                self.url.decode("latin-1"),
                self.headers,
                b"".join(self.body),
                peer[0] if isinstance(peer, tuple) else "",
            )
        )

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            if request is None or self.transport is None or self.transport.is_closing():
                return
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("handler failed for %s %s", request.method, request.target)
                response = SimpleResponse(500, b'{"error": "internal error"}\n')
            self._write(response, request.headers.get("connection", "").lower() == "close")

    def _write(self, response: SimpleResponse, close: bool) -> None:
        if self.transport is None:
            return
        lines = [
            f"HTTP/1.1 {response.status} {reason_phrase(response.status)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            *(f"{k}: {v}" for k, v in response.headers.items()),
        ]
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        if close:
            self.transport.close()

    def _write_and_close(self, response: SimpleResponse) -> None:
        self._write(response, close=True)


async def start_simple_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SimpleHTTPProtocol(handler), host, port)
