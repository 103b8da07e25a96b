"""One request/response cycle, the same for every client codec.

The exchange walks the lifecycle: route, the request hooks of the route's chain, upstream
selection, forwarding with streaming in both directions, the response hooks and the log.
It is driven by callbacks from the downstream codec and the upstream connection, and only
starts a task when something must really wait (a new upstream connection, an async filter).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from portcullis.engine.context import RequestContext
from portcullis.engine.downstream import Downstream
from portcullis.engine.errors import ErrorKind, ProxyError, render_error
from portcullis.engine.forwarding import forwardable_trailers
from portcullis.engine.messages import Headers, Response, ResponseHead
from portcullis.engine.upstream_side import BUFFER_HIGH, UpstreamSide

if TYPE_CHECKING:
    from portcullis.routing.router import CompiledRoute, Router
    from portcullis.upstream.group import Peer, UpstreamGroup
    from portcullis.upstream.link import UpstreamLink
    from portcullis.worker.runtime import Runtime

log = logging.getLogger("portcullis")


class Exchange(UpstreamSide):
    __slots__ = (
        "_early_body",
        "_head_only",
        "_holding",
        "_max_body",
        "ctx",
        "ds",
        "expect_continue",
        "finished",
        "req_chunked",
        "req_done",
        "req_length",
        "request_body_bytes",
        "route",
        "runtime",
        "upgrade",
    )

    def __init__(
        self,
        ds: Downstream,
        ctx: RequestContext,
        runtime: Runtime,
        req_length: int | None,
        req_chunked: bool,
        expect_continue: bool,
        upgrade: bytes | None,
    ) -> None:
        self.ds = ds
        self.ctx = ctx
        self.runtime = runtime
        self.route: CompiledRoute | None = None
        self.req_length = req_length
        self.req_chunked = req_chunked
        self.req_done = not req_chunked and not req_length
        ctx.body_pending = not self.req_done
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.request_body_bytes = 0
        self.head_sent = False
        self.finished = False
        self.response_close_delimited = False
        self._resp_done = False
        self._head_only = ctx.method == "HEAD"
        self._holding = False
        self._early_body: list[bytes] | None = None
        self._max_body = runtime.max_body
        self._body_buffer: list[bytes] | None = None
        self._buffered = 0
        self._sent_body = False
        self._switch_headers: Headers | None = None
        self._conn: UpstreamLink | None = None
        self._req_trailers: Headers | None = None
        self._conn_reused = False
        self._group: UpstreamGroup | None = None
        self._held_head: tuple[ResponseHead, bool | None] | None = None
        self._peer: Peer | None = None
        self._task: asyncio.Task[None] | None = None
        self._upstream_paused_reading = False
        self._tried: tuple[Peer, ...] = ()
        self._peer_open = False
        self._replay: list[bytes] | None = None
        self._replay_size = 0
        self._attempts = 0

    # ================================================================== request side
    def begin(self, router: Router) -> None:
        """The request head is complete and it is this exchange's turn: route and run the chain."""
        ctx = self.ctx
        incoming = ctx.incoming_request_id
        if incoming is not None and len(incoming) <= 200 and incoming.isascii() and incoming:
            ctx.request_id = incoming.decode("ascii")
        else:
            ctx.request_id = self.runtime.next_request_id()
        route = router.match(ctx)
        if route is None:
            self.fail(ProxyError(ErrorKind.NO_ROUTE, f"no route for {ctx.method} {ctx.host}{ctx.path}"))
            return
        ctx.route = self.route = route
        self._max_body = route.max_body
        if self.req_length is not None and self.req_length > route.max_body:
            self.fail(ProxyError(ErrorKind.BODY_TOO_LARGE, f"request body over {route.max_body} bytes"))
            return
        chain = route.chain
        if chain.on_request:
            self._run_request_hooks(0)
        elif chain.holds_body or self._early_body is not None:
            self._forward_or_hold()
        else:
            self._forward()

    def _run_request_hooks(self, start: int) -> None:
        assert self.route is not None
        hooks = self.route.chain.on_request
        for index in range(start, len(hooks)):
            try:
                outcome = hooks[index](self.ctx)
            except Exception as exc:
                self._internal_error(exc)
                return
            if outcome is None:
                continue
            if isinstance(outcome, Response):
                self.respond(outcome)
                return
            self._task = asyncio.get_running_loop().create_task(self._await_hook(outcome, index))
            return
        self._forward_or_hold()

    def _forward_or_hold(self) -> None:
        """Forward now, unless a filter inspects the whole body first (chain.holds_body)."""
        assert self.route is not None
        early = self._early_body
        self._early_body = None
        if early is not None and self.route.chain.holds_body:
            # body bytes that came before this exchange's turn (pipelining): the body filters
            # see them now, before anything is forwarded
            for chunk in early:
                end = chunk == b""  # request_end's marker
                for hook in self.route.chain.on_request_body:
                    answer = hook(self.ctx, chunk, end)
                    if answer is not None:
                        self.respond(answer)
                        return
        if self.route.chain.holds_body and not self.req_done:
            self._holding = True
            if self.expect_continue:
                self.ds.send_continue()
            return
        self._forward()

    async def _await_hook(self, outcome: Awaitable[Response | None], index: int) -> None:
        try:
            result = await outcome
        except Exception as exc:
            self._internal_error(exc)
            return
        if self.finished:
            return
        if result is not None:
            self.respond(result)
        else:
            self._run_request_hooks(index + 1)

    def request_body(self, chunk: bytes) -> None:
        """A piece of the request body arrived from the client."""
        self.request_body_bytes += len(chunk)
        self.ctx.bytes_in += len(chunk)
        if self.request_body_bytes > self._max_body:
            self.fail(ProxyError(ErrorKind.BODY_TOO_LARGE, f"request body over {self._max_body} bytes"))
            return
        if self.route is not None:
            for hook in self.route.chain.on_request_body:
                answer = hook(self.ctx, chunk, False)
                if answer is not None:
                    self.respond(answer)
                    return
        else:  # not this exchange's turn yet (pipelined): kept for the body filters
            if self._early_body is None:
                self._early_body = []
            self._early_body.append(chunk)
        if self.finished:
            return
        conn = self._conn
        if conn is not None and self._body_buffer is None:
            self._sent_body = True
            conn.send_body(chunk)  # the link frames it (chunked, HTTP/2 DATA)
            if self._replay is not None:
                self._keep_for_replay(chunk)
            return
        if self._body_buffer is None:
            self._body_buffer = []
        self._body_buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > BUFFER_HIGH and not self._holding:
            self.ds.pause_reading()

    def request_end(self, trailers: Headers | None) -> None:
        """The request body is complete."""
        self.req_done = True
        if self.finished:
            return
        if self.route is not None:
            for hook in self.route.chain.on_request_body:
                answer = hook(self.ctx, b"", True)
                if answer is not None:
                    self.respond(answer)
                    return
        else:  # the end, replayed with the early chunks
            if self._early_body is None:
                self._early_body = []
            self._early_body.append(b"")
        if self.req_chunked or self.req_length:
            # the end of a body: sent now, or by _attach (after a connect, or again on a retry)
            conn = self._conn
            if trailers:
                trailers = self._req_trailers = forwardable_trailers(trailers)
            if conn is not None and self._body_buffer is None and conn.needs_end:
                conn.send_end(trailers)
        if self._holding:
            self._holding = False
            self._forward()
            return
        if self._resp_done:
            self._finish()

    # ================================================================== upgrade tunnel
    def upstream_upgraded(self, leftover: bytes) -> None:
        """The peer switched protocols: from now on bytes flow untouched both ways."""
        headers = [(b"Connection", b"upgrade"), (b"Upgrade", self.upgrade or b""), *(self._switch_headers or ())]
        self.head_sent = True
        self.ctx.status = 101
        self.ds.send_switch(headers)
        if leftover:
            self.ds.tunnel_write(leftover)

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.ctx.bytes_out += len(data)
        self.ds.tunnel_write(data)

    def tunnel_from_downstream(self, data: bytes) -> None:
        self.ctx.bytes_in += len(data)
        if self._conn is not None:
            self._conn.write(data)

    def tunnel_closed(self) -> None:
        self._conn = None
        if not self.finished:
            self._finish(keep_alive=False)
            self.ds.abort()

    # ================================================================== answers and errors
    def respond(self, response: Response) -> None:
        """Answer with a response made by the proxy (a filter's, or an error)."""
        if self.finished or self.head_sent:
            return
        head = ResponseHead(response.status, list(response.headers))
        if self.route is not None:
            try:
                for hook in self.route.chain.on_response:
                    hook(self.ctx, head)
            except Exception:
                log.exception("response filter failed on a generated response")
        no_body = self._head_only or response.status in (204, 304)
        self._send_head(head, len(response.body), no_body, not self.req_done, None)
        if response.body and not no_body:
            self.ctx.bytes_out += len(response.body)
            self.ds.send_body(response.body)
        self.ds.send_end(None)
        self._resp_done = True
        self._drop_upstream()
        self._finish(keep_alive=self.req_done)

    def fail(self, error: ProxyError) -> None:
        """Turn any failure into the right answer, or drop the connection if the answer has begun."""
        ctx = self.ctx
        if ctx.error is None:
            ctx.error = error
        if ctx.decision is None:
            ctx.decision = f"{error.kind.value}: {error.detail}" if error.detail else error.kind.value
        if self.finished:
            return
        if self.head_sent:
            self._drop_upstream()
            self._finish(keep_alive=False)
            self.ds.abort()
            return
        if not ctx.request_id:
            ctx.request_id = self.runtime.next_request_id()
        content_type, body = render_error(error.status, error.detail, ctx.request_id, ctx.header(b"accept"))
        self.respond(Response(error.status, [(b"Content-Type", content_type)], body))

    def _internal_error(self, exc: Exception) -> None:
        log.exception("filter failed", exc_info=exc)
        self.fail(ProxyError(ErrorKind.INTERNAL, "internal error"))

    def client_gone(self) -> None:
        """The client closed its connection; abandon the exchange."""
        if self.finished:
            return
        if self.ctx.error is None and not self._resp_done:
            self.ctx.error = ProxyError(ErrorKind.CLIENT_CLOSED, "client closed the connection")
            if not self.head_sent:
                self.ctx.status = 499
        self._drop_upstream()
        self._finish(keep_alive=False)

    # ================================================================== internals
    def _send_head(
        self, head: ResponseHead, length: int | None, no_body: bool, close: bool, has_rid: bool | None
    ) -> None:
        """`has_rid`: whether the head already carries a request id (None: look)."""
        self.head_sent = True
        self.ctx.status = head.status
        runtime = self.runtime
        if has_rid is None:
            has_rid = head.get(runtime.request_id_header_lower) is not None
        if not has_rid and self.ctx.request_id:
            head.headers.append((runtime.request_id_header, self.ctx.request_id.encode()))
        self.ds.send_head(head.status, head.headers, length, no_body, close)

    def _drop_upstream(self) -> None:
        self._settle(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abort()

    def _finish(self, keep_alive: bool = True) -> None:
        if self.finished:
            return
        self.finished = True
        ctx = self.ctx
        if self.route is not None:
            for hook in self.route.chain.on_log:
                try:
                    hook(ctx)
                except Exception:
                    log.exception("log filter failed")
        self.runtime.request_finished(ctx)
        self.ds.exchange_done(keep_alive)
