"""The upstream half of an exchange: choosing a peer, connecting, sending, reading the answer,
and trying again on another peer when that is safe.

A mixin of `Exchange` (engine/exchange.py), which owns the state declared below and the
answer and error paths these methods end in.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.engine.filter import Refuse
from portcullis.engine.forwarding import forwardable_trailers, response_headers
from portcullis.engine.messages import Headers, Response, ResponseHead
from portcullis.upstream.sticky import add_sticky_cookie

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext
    from portcullis.engine.downstream import Downstream
    from portcullis.routing.router import CompiledRoute
    from portcullis.upstream.group import Peer, UpstreamGroup
    from portcullis.upstream.link import UpstreamLink
    from portcullis.worker.runtime import Runtime

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NOT_SENT = (ErrorKind.CONNECT_FAILED, ErrorKind.CONNECT_TIMEOUT, ErrorKind.UPSTREAM_REFUSED)
"""Failures that prove the peer never processed the request: any method may be sent again."""
BUFFER_HIGH = 64 * 1024
"""Request body held for a peer not connected yet beyond which the client is paused."""


def _retry_after(headers: Headers) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after" and value.strip().isdigit():
            return float(value)
    return None


class UpstreamSide:
    __slots__ = (
        "_attempts",
        "_body_buffer",
        "_buffered",
        "_conn",
        "_conn_reused",
        "_group",
        "_held_head",
        "_peer",
        "_peer_open",
        "_replay",
        "_replay_size",
        "_req_trailers",
        "_resp_done",
        "_sent_body",
        "_switch_headers",
        "_task",
        "_tried",
        "_upstream_paused_reading",
        "head_sent",
        "response_close_delimited",
    )

    # state owned by Exchange
    ctx: RequestContext
    ds: Downstream
    runtime: Runtime
    route: CompiledRoute | None
    req_length: int | None
    req_chunked: bool
    req_done: bool
    expect_continue: bool
    upgrade: bytes | None
    head_sent: bool
    finished: bool
    response_close_delimited: bool
    _resp_done: bool
    _head_only: bool
    _body_buffer: list[bytes] | None
    _buffered: int
    _sent_body: bool
    _switch_headers: Headers | None
    _conn: UpstreamLink | None
    _req_trailers: Headers | None
    _conn_reused: bool
    _group: UpstreamGroup | None
    _held_head: tuple[ResponseHead, bool | None] | None
    _peer: Peer | None
    _task: asyncio.Task[None] | None
    _upstream_paused_reading: bool
    _tried: tuple[Peer, ...]
    _peer_open: bool
    _replay: list[bytes] | None
    _replay_size: int
    _attempts: int

    # the answer paths, in Exchange
    def fail(self, error: ProxyError) -> None:
        raise NotImplementedError

    def _internal_error(self, exc: Exception) -> None:
        raise NotImplementedError

    def _send_head(
        self, head: ResponseHead, length: int | None, no_body: bool, close: bool, has_rid: bool | None
    ) -> None:
        raise NotImplementedError

    def _finish(self, keep_alive: bool = True) -> None:
        raise NotImplementedError

    def respond(self, response: Response) -> None:
        raise NotImplementedError

    def _forward(self) -> None:
        route = self.route
        assert route is not None
        group = route.upstream
        if group is None:
            self.fail(ProxyError(ErrorKind.INTERNAL, f"route {route.name!r} has no upstream and no filter answered"))
            return
        self._group = group
        if self.upgrade is not None and group.http2:
            self.fail(ProxyError(ErrorKind.UPSTREAM_PROTOCOL, "no protocol upgrade (WebSocket) to an HTTP/2 upstream"))
            return
        if group.retries.attempts:
            group.budget.requests += 1
            if self.req_length or self.req_chunked:
                # keep what is sent so another peer can be sent the same body
                self._replay = [] if (self.req_length or 0) <= group.retries.max_body else None
        if self.expect_continue and not self.req_done:
            self.ds.send_continue()
        self._try_peer()

    def _try_peer(self) -> None:
        """Pick a peer (another one on a retry) and send the request to it."""
        group = self._group
        assert group is not None
        tried = self._tried
        if tried:
            peer = group.select(self.ctx, tried)
        elif (quick := group.quick) is not None:
            peer = quick()
        elif (keyed := group.keyed) is not None:
            peer = keyed(self.ctx)
        else:
            peer = group.select(self.ctx, tried)
        if peer is None:
            if group.at_capacity():
                self._task = asyncio.get_running_loop().create_task(self._wait_for_room())
            else:
                self.fail(ProxyError(ErrorKind.NO_HEALTHY_PEER, f"no available peer in upstream {group.name!r}"))
            return
        self._peer = peer
        self.ctx.peer = peer.label
        peer.active += 1
        if peer.breaker is not None:
            peer.breaker.started()
        self._peer_open = True
        conn = peer.pool.acquire(self.ctx.method not in _IDEMPOTENT)
        if conn is not None:
            self._conn_reused = True
            self._attach(conn)
        else:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _wait_for_room(self) -> None:
        """Every peer is at its max_conns: wait a bounded time for one to have room."""
        group = self._group
        assert group is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + group.queue_timeout
        while loop.time() < end:
            await asyncio.sleep(0.01)
            if self.finished:
                return
            if not group.at_capacity():
                self._try_peer()
                return
        self.fail(ProxyError(ErrorKind.NO_HEALTHY_PEER, f"every peer of upstream {group.name!r} is at max_conns"))

    def _settle(self, ok: bool | None) -> None:
        """Tell the group how the try on the current peer went, exactly once per try (None: the
        try was abandoned for reasons of our own and says nothing about the peer)."""
        if self._peer_open:
            self._peer_open = False
            peer, group = self._peer, self._group
            assert peer is not None and group is not None
            peer.active -= 1
            # only a latency average, a breaker or ejection learns from an outcome
            if ok is None or group.trivial:
                return
            if not group.simple:
                group.record(peer, ok, self.ctx.upstream_time if ok else None)
            elif ok and group.tracks_latency and self.ctx.upstream_time is not None:
                peer.observe_latency(self.ctx.upstream_time)  # all that a simple group learns

    async def _connect(self) -> None:
        peer, group = self._peer, self._group
        assert peer is not None and group is not None
        runtime = self.runtime
        try:
            async with asyncio.timeout(group.connect_timeout):
                conn = await peer.pool.connect(peer, runtime.watchdog)
        except TimeoutError:
            self.upstream_failed(ProxyError(ErrorKind.CONNECT_TIMEOUT, f"connecting to {peer.label} timed out"))
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.upstream_failed(ProxyError(ErrorKind.CONNECT_FAILED, f"cannot connect to {peer.label}: {reason}"))
            return
        if self.finished:
            peer.pool.release(conn, runtime.watchdog.now)
            return
        self._conn_reused = False
        self._attach(conn)

    def _attach(self, conn: UpstreamLink) -> None:
        group, peer = self._group, self._peer
        assert group is not None and peer is not None
        self._conn = conn
        runtime = self.runtime
        ctx = self.ctx
        ctx.upstream_time = runtime.clock()
        peer.counters.attempts += 1
        conn.bind(self, self._head_only, group.response_timeout, group.idle_timeout)  # type: ignore[arg-type]
        conn.send_head()  # the link frames the request: HTTP/1.1 bytes or HTTP/2 frames
        if self._replay:
            conn.send_body(b"".join(self._replay))  # a retry: the body sent to the peer before
        if self._body_buffer is not None:
            self._sent_body = True
            data = b"".join(self._body_buffer)
            conn.send_body(data)
            self._keep_for_replay(data)
            self._body_buffer = None
            if self._buffered > BUFFER_HIGH:
                self.ds.resume_reading()
            self._buffered = 0
        if self.req_done and (self.req_chunked or self.req_length) and conn.needs_end:
            conn.send_end(self._req_trailers)  # the body ended before this link was there

    def _keep_for_replay(self, data: bytes) -> None:
        replay = self._replay
        if replay is not None and self._group is not None:
            replay.append(data)
            self._replay_size += len(data)
            if self._replay_size > self._group.retries.max_body:
                self._replay = None  # too large to send again: this request will not be retried

    def upstream_head(self, status: int, raw_headers: Headers, keep_alive: bool, ended: bool = False) -> None:
        """The peer's response head; `ended`: the response is this head alone (an HTTP/2 HEADERS frame
        with END_STREAM, such as gRPC's Trailers-Only answer)."""
        ctx = self.ctx
        runtime = self.runtime
        group, peer = self._group, self._peer
        assert group is not None and peer is not None
        if ctx.upstream_time is not None:
            ctx.upstream_time = elapsed = runtime.clock() - ctx.upstream_time
            peer.counters.durations.observe(elapsed)
        if status == 101:
            if self.upgrade is None:
                self.upstream_failed(ProxyError(ErrorKind.UPSTREAM_PROTOCOL, "101 without an upgrade request"))
            # the peer's end-to-end fields (Sec-WebSocket-Accept ...) go with the switch
            self._switch_headers = response_headers(raw_headers, runtime.request_id_header_lower).headers
            return  # the switch itself happens in upstream_upgraded
        self._settle(status < 500)
        if status == 503 and not group.trivial:
            wait = _retry_after(raw_headers)
            if wait is not None:
                group.retry_after(peer, wait)  # honoured whether or not this request is retried
        if status in group.retries.on_statuses and self._may_retry(idempotent_only=True):
            self._retry(ProxyError(ErrorKind.UPSTREAM_STATUS, f"peer {peer.label} answered {status}"))
            return
        no_body = self._head_only or ended or status == 204 or status == 304
        route = self.route
        assert route is not None
        chain = route.chain
        if not chain.edits_responses and group.sticky is None:
            # nothing edits this response: its head goes out in one pass over the peer's fields
            self.head_sent = True
            ctx.status = status
            self.response_close_delimited = self.ds.forward_head(
                status, raw_headers, no_body, ctx.request_id, runtime.request_id_header
            )
            return
        upstream = response_headers(raw_headers, runtime.request_id_header_lower)
        if group.sticky is not None:
            add_sticky_cookie(ctx, group, peer, upstream.headers)
        length = upstream.length
        self.response_close_delimited = length is None and not upstream.chunked and not no_body
        head = ResponseHead(status, upstream.headers)
        try:
            for hook in chain.on_upstream_response:
                hook(ctx, head)
            for hook in chain.on_response:
                hook(ctx, head)
        except Refuse as refusal:
            self._refused(refusal)
            return
        except Exception as exc:
            self._internal_error(exc)
            return
        if chain.on_response_body and not no_body:
            length = None  # a body filter may change the length
        has_rid = upstream.has_request_id if not chain.on_response else None
        if chain.holds_response and not no_body:
            self._held_head = (head, has_rid)  # sent with the first body bytes let through
            return
        self._send_head(head, length, no_body, False, has_rid)

    def _release_head(self, length: int | None) -> None:
        held = self._held_head
        assert held is not None
        self._held_head = None
        self._send_head(held[0], length, False, False, held[1])

    def _refused(self, refusal: Refuse) -> None:
        """A response hook refused the peer's response: answer instead while nothing of it has
        been sent; once something has, cut the connection."""
        self._held_head = None
        if self.head_sent:
            self.fail(ProxyError(ErrorKind.REFUSED, refusal.reason))
        else:
            self.respond(refusal.response)

    def flush_downstream(self) -> None:
        """Called after each read from the peer, so nothing waits longer than one read."""
        self.ds.flush()

    def upstream_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        assert self.route is not None
        try:
            for hook in self.route.chain.on_response_body:
                chunk = hook(self.ctx, chunk, False)
        except Refuse as refusal:
            self._refused(refusal)
            return
        if chunk:
            if self._held_head is not None:
                self._release_head(None)
            self.ctx.bytes_out += len(chunk)
            self.ds.send_body(chunk)

    def upstream_complete(self, trailers: Headers | None, reusable: bool) -> None:
        conn, peer = self._conn, self._peer
        self._conn = None
        if conn is not None and peer is not None:
            if reusable and self.req_done and not self.finished:
                peer.pool.release(conn, self.runtime.watchdog.now)
            else:
                conn.close()
        if self.finished:
            return
        assert self.route is not None
        tail = b""
        try:
            for hook in self.route.chain.on_response_body:
                tail = hook(self.ctx, tail, True)
        except Refuse as refusal:
            self._refused(refusal)
            return
        if self._held_head is not None:
            self._release_head(len(tail))  # the whole body is known: it gets a Content-Length
        if tail:
            self.ctx.bytes_out += len(tail)
            self.ds.send_body(tail)
        self.ds.send_end(forwardable_trailers(trailers) if trailers else None)
        self._resp_done = True
        if self.req_done:
            self._finish()
        else:
            # the peer answered before the body was all sent: the client's connection can't be reused
            self._finish(keep_alive=False)

    def upstream_failed(self, error: ProxyError) -> None:
        conn = self._conn
        self._conn = None
        if self.finished:
            return
        if self._group is not None and self._peer is not None:
            self.runtime.upstream_failed(self._group.name, self._peer.label, error)
        if conn is None or conn.got_bytes or not self._conn_reused or error.kind is not ErrorKind.UPSTREAM_RESET:
            self._settle(False)  # (a stale pooled connection says nothing about the peer)
        if (
            not self.head_sent
            and error.retryable
            and self._may_retry(idempotent_only=error.kind not in _NOT_SENT)
        ):
            if conn is not None:
                conn.abort()
            self._retry(error)
            return
        if (
            conn is not None
            and self._conn_reused
            and not conn.got_bytes
            and error.kind is ErrorKind.UPSTREAM_RESET
            and not self._sent_body
            and self.ctx.method in _IDEMPOTENT
            and self.req_done
        ):
            # the classic keep-alive race: the peer closed an idle connection as we reused it
            self._conn_reused = False
            self._task = asyncio.get_running_loop().create_task(self._connect())
            return
        self._settle(False)
        self.fail(error)

    def _may_retry(self, idempotent_only: bool) -> bool:
        """May this request be sent again? Never once the client has seen any of the answer."""
        group = self._group
        if group is None or self.head_sent or self.finished or self._attempts >= group.retries.attempts:
            return False
        if self._held_head is not None:
            return False  # the response has begun (its head is only held back)
        if self.upgrade is not None:
            return False
        if idempotent_only and self.ctx.method not in _IDEMPOTENT:
            return False
        if self._sent_body and (self._replay is None or not self.req_done):
            return False  # the body cannot be sent again
        total = group.retries.total_timeout
        if total is not None and self.runtime.clock() - self.ctx.started > total:
            return False
        return group.budget.try_retry()

    def _retry(self, error: ProxyError) -> None:
        self._attempts += 1
        if self._peer is not None:
            self._tried += (self._peer,)
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abort()
        self._settle(False)
        self.runtime.retried(self.ctx, error)
        self._try_peer()

    def upstream_write_paused(self) -> None:
        self.ds.pause_reading()

    def upstream_write_resumed(self) -> None:
        self.ds.resume_reading()

    def downstream_write_paused(self) -> None:
        if self._conn is not None:
            self._upstream_paused_reading = True
            self._conn.pause_reading()

    def downstream_write_resumed(self) -> None:
        if self._conn is not None and self._upstream_paused_reading:
            self._upstream_paused_reading = False
            self._conn.resume_reading()
