"""What the exchange needs from the client side, whatever the codec (HTTP/1.1 today, HTTP/2 next)."""

from __future__ import annotations

from typing import Protocol

from portcullis.engine.messages import Headers


class Downstream(Protocol):
    trusted: bool
    """The client address is a configured trusted proxy (its X-Forwarded-* headers are kept)."""

    def send_head(
        self, status: int, headers: Headers, length: int | None, no_body: bool, close: bool
    ) -> None:
        """Start the response. `length` None with a body means streamed (chunked or close-delimited);
        `close` asks for the connection to end after this response."""

    def forward_head(
        self, status: int, headers: Headers, no_body: bool, request_id: str, request_id_header: bytes
    ) -> bool:
        """Start the response with a peer's head: its fields less the hop-by-hop ones, plus the
        request id unless the peer sent one. Returns whether the body ends with the peer's close.
        (`forwarding.forward_head_fields` does this for any codec.)"""

    def send_body(self, data: bytes) -> None: ...

    def flush(self) -> None:
        """Send what the codec holds back (a head waiting to leave with its first body bytes)."""

    def send_end(self, trailers: Headers | None) -> None: ...

    def send_continue(self) -> None:
        """Answer `Expect: 100-continue`."""

    def send_switch(self, headers: Headers) -> None:
        """Send `101 Switching Protocols` and become a raw tunnel."""

    def tunnel_write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def exchange_done(self, keep_alive: bool) -> None:
        """The exchange has ended; the connection may serve the next request if `keep_alive`."""

    def abort(self) -> None:
        """Drop the connection: the response cannot be completed."""
