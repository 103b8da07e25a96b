"""A bounded keep-alive pool of idle HTTP/1.1 connections to one peer."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from portcullis.upstream.connection import UpstreamConnection

if TYPE_CHECKING:
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.group import Peer


class Pool:
    __slots__ = ("busy", "idle", "idle_timeout", "max_idle")

    def __init__(self, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.busy = 0

    def acquire(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open (LIFO keeps few sockets warm)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                return conn
            conn.close()
        return None

    @property
    def idle_count(self) -> int:
        return len(self.idle)

    async def connect(self, peer: Peer, watchdog: Watchdog) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: UpstreamConnection(self, watchdog),
            peer.host,
            peer.port,
            ssl=peer.ssl,
            server_hostname=peer.server_hostname,
        )
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        transport = conn.transport
        if len(self.idle) >= self.max_idle or conn.closed or transport is None or transport.is_closing():
            conn.close()
            return
        conn.park(now + self.idle_timeout)
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop().close()
