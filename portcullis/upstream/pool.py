"""A bounded keep-alive pool of idle HTTP/1.1 connections to one peer."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from portcullis.upstream.connection import UpstreamConnection

if TYPE_CHECKING:
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.group import Peer

# How often the pool closes idle connections that a busy period left and that nothing needs now.
TRIM_INTERVAL = 5.0


class Pool:
    """Idle connections are reused oldest first, and every TRIM_INTERVAL half of the ones that
    were never all needed during the interval are closed.

    Oldest first rather than most recent first: on a busy pool the connection just released is
    the one the peer has just answered on, and sending the next request there at once costs more
    cross-CPU wakeups of the peer than one that has rested (about a third fewer per request, and
    10-20 % more requests/s through the proxy, measured with bench/balance_bench.py). Most
    recent first would let the connections a burst opened expire on their own; the low-water mark
    below does that instead: the fewest idle connections seen during an interval is how many the
    load did not need. A request that cannot be retried still gets the most recently used one.
    """

    __slots__ = ("_low_water", "_trim_at", "busy", "idle", "idle_timeout", "max_idle")

    def __init__(self, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: deque[UpstreamConnection] = deque()
        self.busy = 0
        self._low_water = 0
        self._trim_at = 0.0

    def acquire(self, recent: bool = False) -> UpstreamConnection | None:
        """The idle connection that has rested longest and is still open; with `recent` (a request
        that cannot be sent again) the one used last, which the peer is least likely to be closing
        for having been idle too long."""
        idle = self.idle
        while idle:
            conn = idle.pop() if recent else idle.popleft()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                if len(idle) < self._low_water:
                    self._low_water = len(idle)
                return conn
            conn.close()
        self._low_water = 0
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
        idle = self.idle
        if len(idle) >= self.max_idle or conn.closed or transport is None or transport.is_closing():
            conn.close()
            return
        conn.park(now + self.idle_timeout)
        idle.append(conn)
        if now >= self._trim_at:
            self._trim(now)

    def _trim(self, now: float) -> None:
        """Close half (rounded up) of the connections that stayed idle for the whole interval."""
        idle = self.idle
        surplus = min(self._low_water, len(idle) - 1)
        for _ in range((surplus + 1) // 2):
            idle.popleft().close()
        self._low_water = len(idle)
        self._trim_at = now + TRIM_INTERVAL

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop().close()
