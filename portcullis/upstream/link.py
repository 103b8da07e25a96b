"""What the exchange needs from an upstream connection and its pool, whatever the protocol.

An HTTP/1.1 connection (upstream/connection.py) is a link of its own, used by one exchange at a
time; an HTTP/2 connection (upstream/h2_connection.py) hands out one link per stream. The exchange
gives the request as a head taken from its RequestContext, raw body pieces and an end with
trailers; each link frames them (HTTP/1.1 bytes, chunked or not, or HTTP/2 frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from portcullis.engine.messages import Headers

if TYPE_CHECKING:
    from portcullis.engine.exchange import Exchange
    from portcullis.engine.watchdog import Watchdog
    from portcullis.upstream.group import Peer


class UpstreamLink(Protocol):
    got_bytes: bool
    """Something of the response has arrived (a failure after that says the peer took the request)."""
    @property
    def needs_end(self) -> bool:
        """`send_end` must be called when a body ends (false for an HTTP/1.1 Content-Length body)."""

    def bind(self, exchange: Exchange, head_only: bool, response_timeout: float, idle_timeout: float) -> None:
        """Serve `exchange` (its request, with the timeouts of its upstream)."""

    def send_head(self) -> None:
        """Send the bound exchange's request head, with the forwarding rules of engine/forwarding.py."""

    def send_body(self, chunk: bytes) -> None:
        """A non-empty piece of the request body."""

    def send_end(self, trailers: Headers | None) -> None:
        """The request body is complete; `trailers` are already filtered (forwardable_trailers)."""

    def write(self, data: bytes) -> None:
        """Raw bytes of an upgraded tunnel (HTTP/1.1 only)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None:
        """Give up on the request: the link is dropped (a connection reset, a stream cancelled)."""

    def close(self) -> None:
        """Done with the link, which may not serve another request."""


class LinkPool(Protocol):
    """The links to one peer: idle HTTP/1.1 connections, or shared HTTP/2 connections."""

    max_idle: int
    idle_timeout: float

    @property
    def idle_count(self) -> int:
        """Open connections serving no request (for the gauges)."""

    @property
    def busy(self) -> int:
        """Requests in progress on this pool's connections."""

    def acquire(self, recent: bool = False) -> UpstreamLink | None:
        """A link ready at once (an idle connection, a free stream), or None: `connect`. `recent`
        asks for the connection least likely to have been closed by the peer meanwhile, for a
        request that could not be sent again."""

    async def connect(self, peer: Peer, watchdog: Watchdog) -> UpstreamLink:
        """A link on a new connection (raises OSError; the caller bounds the time)."""

    def release(self, link: Any, now: float) -> None:
        """`link` (one this pool handed out) ended its request cleanly and may serve another."""

    def close_all(self) -> None: ...
