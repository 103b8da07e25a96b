"""The control channel between the master and a worker: one JSON object per line over a
socket pair. Master to worker: `config` (with the session-ticket secrets), `tickets` (a rotation),
`health`, `stats`. Worker to master: `ready`, `error`, `stats`."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

_LIMIT = 64 * 1024 * 1024  # a config file is sent whole


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other side has gone."""
        try:
            line = await self._reader.readline()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return None
        if not line:
            return None
        message = json.loads(line)
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        self._writer.close()
