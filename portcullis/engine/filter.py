"""The extension point: features are `Filter`s that plug into the lifecycle's phases.

A filter instance is built once per config and shared by every request, so it holds no
per-request state; that lives in the `RequestContext`. A filter overrides only the hooks it
needs: the chain compiler keeps just those, so a hook nobody implements costs nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import ClassVar

from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Response, ResponseHead
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services

# A request hook answers now (Response), lets the request go on (None), or, when it must
# wait for I/O, returns an awaitable of either. Synchronous answers keep the fast path free
# of tasks; the engine only schedules a task when a hook really awaits.
RequestOutcome = Response | None | Awaitable[Response | None]


class Refuse(Exception):
    """Raised by `on_upstream_response` or `on_response_body` to refuse the peer's response: the
    exchange answers `response` instead while nothing of the peer's response has been sent, and
    cuts the connection once something has (a client must not take a part for the whole)."""

    def __init__(self, response: Response, reason: str = "response refused") -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


class Filter:
    kind: ClassVar[str] = ""
    phase: ClassVar[Phase] = Phase.RESPOND
    needs_request_body: ClassVar[bool] = False
    """True: the exchange holds the request until its body is complete (on_request_body saw
    end=True) before forwarding, so the filter can still answer instead (body inspection)."""
    holds_response: ClassVar[bool] = False
    """True: the exchange sends a peer's response head only with the first body bytes the body
    hooks let through (or at the end), so a body hook that holds bytes back can still `Refuse`
    the response with a clean answer (response inspection)."""

    async def start(self, services: Services) -> None:
        """Open clients, fetch keys ...; called once before the config serves traffic."""

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> Response | None:
        return None

    def on_upstream_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        """Changes here are what a cache would store."""

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        """Changes here reach the client only (also applied to responses the proxy makes)."""

    def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk

    def on_log(self, ctx: RequestContext) -> None:
        """Runs exactly once per request; must not raise."""

    async def close(self) -> None:
        """Release what `start` opened."""
