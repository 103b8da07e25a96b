"""The HTTP/2 connections to one peer: streams are taken on a connection with room, and a new
connection is opened (one at a time, shared by the requests waiting for it) when all are full."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from portcullis.upstream.h2_connection import H2UpstreamConnection

if TYPE_CHECKING:
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.group import Peer
    from portcullis.upstream.h2_stream import H2UpstreamStream

_CONNECT_TIMEOUT = 5.0  # when the peer has no group (never in a running worker)


class H2Pool:
    __slots__ = ("_connecting", "conns", "idle_timeout", "max_idle")

    def __init__(self, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        """Connections without streams kept open."""
        self.idle_timeout = idle_timeout
        self.conns: list[H2UpstreamConnection] = []
        self._connecting: asyncio.Future[H2UpstreamConnection] | None = None

    @property
    def idle_count(self) -> int:
        return sum(1 for conn in self.conns if not conn.active)

    @property
    def busy(self) -> int:
        return sum(conn.active for conn in self.conns)

    def acquire(self, recent: bool = False) -> H2UpstreamStream | None:
        for conn in self.conns:
            if conn.has_room():
                return conn.new_stream()
        return None

    async def connect(self, peer: Peer, watchdog: Watchdog) -> H2UpstreamStream:
        while True:
            link = self.acquire()
            if link is not None:
                return link
            pending = self._connecting
            if pending is None:
                pending = self._connecting = asyncio.ensure_future(self._open(peer, watchdog))
                pending.add_done_callback(self._opened)
            # shielded: a request that gives up does not cancel the connection the others wait for
            conn = await asyncio.shield(pending)
            if conn.capacity == 0:
                raise ConnectionError(f"{peer.label} takes no HTTP/2 streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)")

    async def _open(self, peer: Peer, watchdog: Watchdog) -> H2UpstreamConnection:
        loop = asyncio.get_running_loop()
        scheme = b"https" if peer.ssl is not None else b"http"
        timeout = peer.group.connect_timeout if peer.group is not None else _CONNECT_TIMEOUT
        conn: H2UpstreamConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: H2UpstreamConnection(self, watchdog, scheme),
                    peer.host,
                    peer.port,
                    ssl=peer.ssl,
                    server_hostname=peer.server_hostname,
                )
                await conn.ready  # the peer's SETTINGS: it speaks HTTP/2, and its limits are known
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self.conns.append(conn)
        return conn

    def _opened(self, future: asyncio.Future[H2UpstreamConnection]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # (retrieved here: the waiters may all have gone)

    def release(self, link: H2UpstreamStream, now: float) -> None:
        link.release()

    def became_idle(self, conn: H2UpstreamConnection, now: float) -> None:
        """`conn` serves no stream any more: kept until the idle timeout, within `max_idle`."""
        if self.idle_count > self.max_idle:
            conn.close()
        else:
            conn.deadline = now + self.idle_timeout

    def discard(self, conn: H2UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.close()
