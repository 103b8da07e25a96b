"""Upstream groups and their peers: which peer gets a request, and what each outcome teaches."""

from __future__ import annotations

import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portcullis.balancing.health import Breaker, BreakerPolicy, Outlier, OutlierPolicy, RetryBudget
from portcullis.balancing.selectors import SELECTORS, Maglev, RoundRobin, Selector
from portcullis.config.schema import Upstream as UpstreamConfig
from portcullis.config.units import parse_peer_url
from portcullis.observability.events import event
from portcullis.observability.stats import PeerCounters
from portcullis.tls.upstream import upstream_context
from portcullis.upstream.sticky import sticky_token

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext
    from portcullis.upstream.link import LinkPool

log = logging.getLogger("portcullis")

_EWMA_DECAY = 0.3
_EWMA_HALF_LIFE = 10.0  # seconds without an answer that halve a peer's remembered latency
_EWMA_FADE_AFTER = 0.5  # seconds without an answer before the fading starts


class Peer:
    """One peer of one upstream: its address, pool, load and health."""

    __slots__ = (
        "_answered",
        "_quiet_since",
        "active",
        "active_ok",
        "backup",
        "base_weight",
        "breaker",
        "counters",
        "ewma",
        "group",
        "host",
        "http2",
        "key",
        "label",
        "max_conns",
        "origin",
        "outlier",
        "pool",
        "port",
        "reason",
        "recovered_at",
        "retry_after_until",
        "server_hostname",
        "ssl",
        "url",
    )  # fmt: skip

    def __init__(self, url: str, weight: int, pool: LinkPool, backup: bool = False, max_conns: int = 0) -> None:
        self.url = self.key = url
        self.origin = url
        """The configured peer this one comes from (a host name's addresses share it)."""
        _, hostport, self.host, self.port = parse_peer_url(url)
        self.label = hostport
        self.ssl: ssl.SSLContext | None = None  # https:// peers: set by the group
        self.http2 = url.startswith("h2://")  # (https:// peers: set by the group)
        self.server_hostname: str | None = None
        self.base_weight = weight
        self.backup = backup
        self.max_conns = max_conns
        self.pool = pool
        self.counters = PeerCounters()  # the worker's own, once the runtime is built (worker/build.py)
        self.active = 0
        self.ewma = 0.0
        """Smoothed response time in seconds (p2c_ewma). It fades while the peer gets no answers
        (`UpstreamGroup.fade_latencies`), so a peer that was slow once is tried again later."""
        self._answered = False
        self._quiet_since = 0.0
        self.active_ok = True
        self.reason = "healthy"
        self.recovered_at = 0.0
        self.retry_after_until = 0.0
        self.breaker: Breaker | None = None
        self.outlier: Outlier | None = None
        self.group: UpstreamGroup | None = None

    @property
    def weight(self) -> float:
        group = self.group
        if not self.recovered_at or group is None or not group.slow_start:
            return self.base_weight
        ramp = (group.clock() - self.recovered_at) / group.slow_start
        if ramp >= 1.0:
            self.recovered_at = 0.0
            return self.base_weight
        return self.base_weight * max(ramp, 0.05)

    def observe_latency(self, seconds: float) -> None:
        current = self.ewma
        self.ewma = seconds if current == 0.0 else current + _EWMA_DECAY * (seconds - current)
        self._answered = True

    def state(self, now: float) -> str:
        if not self.active_ok:
            return "down"
        if self.outlier is not None and self.outlier.ejected(now):
            return "ejected"
        if self.breaker is not None and self.breaker.state.value != "closed":
            return f"breaker {self.breaker.state.value}"
        if now < self.retry_after_until:
            return "retry-after"
        return "up"


class UpstreamGroup:
    def __init__(self, name: str, config: UpstreamConfig, peers: Sequence[Peer], clock: object = None) -> None:
        self.name = name
        self.config = config
        self.clock = clock if callable(clock) else time.monotonic
        self.connect_timeout = config.timeouts.connect
        self.response_timeout = config.timeouts.response
        self.idle_timeout = config.timeouts.idle
        self.retries = config.retries
        self.budget = RetryBudget(config.retries.budget)
        self.slow_start = config.slow_start
        self.queue_timeout = config.queue_timeout
        self.sticky = config.sticky
        self.hash_key = config.hash_key
        kind, _, name = (config.hash_key or "").partition(":")
        self._hash_kind = kind or ("client_ip" if config.balance == "ip_hash" else "")
        self._hash_name = name
        self._hash_header = name.lower().encode()
        self.max_outstanding = config.breaker.max_outstanding if config.breaker else 0
        self._retry_after_until = 0.0
        self.set_peers(peers)

    def set_peers(self, peers: Sequence[Peer]) -> None:
        """Adopt a (new) peer list: at start, and when discovery finds the set has changed."""
        config = self.config
        self.peers = tuple(peers)
        self.primaries = tuple(p for p in self.peers if not p.backup)
        self.backups = tuple(p for p in self.peers if p.backup)
        selector = SELECTORS[config.balance]
        self.selector: Selector = selector(self.primaries)
        self.backup_selector: Selector | None = selector(self.backups) if self.backups else None
        for peer in self.peers:
            peer.group = self
            peer.http2 = config.peer_http2(peer.url)
            if peer.url.startswith("https://"):
                peer.ssl = upstream_context(config.tls, peer.http2)
                peer.server_hostname = (config.tls.server_name if config.tls else None) or peer.host.strip("[]")
            if config.breaker is not None and peer.breaker is None:
                peer.breaker = Breaker(BreakerPolicy(config.breaker.failures, config.breaker.open_for))
            if config.outlier is not None and peer.outlier is None:
                o = config.outlier
                peer.outlier = Outlier(
                    OutlierPolicy(
                        o.failure_rate, o.window, o.min_requests, o.ejection, o.max_ejection, o.max_ejected_share
                    )
                )
        # one peer and nothing that could take it out of service: no per-request bookkeeping at all
        self.trivial = (
            len(self.peers) == 1
            and not self.peers[0].max_conns  # a limit must still be checked for each request
            and config.health is None
            and config.breaker is None
            and config.outlier is None
            and config.discovery is None
        )
        self.by_key = {p.key: p for p in self.peers}
        self.http2 = any(p.http2 for p in self.peers)
        # no health policy, breaker, ejection or connection cap: only a Retry-After can make a peer unavailable
        self.simple = (
            config.health is None
            and config.breaker is None
            and config.outlier is None
            and not self.backups
            and not any(p.max_conns for p in self.peers)
        )
        self._by_token = {sticky_token(p): p for p in self.peers}
        # `simple`, and the choice needs nothing from the request either
        keyless = config.balance in ("round_robin", "least_conn", "random", "p2c_ewma")
        self.plain = self.simple and self.sticky is None and keyless
        self.tracks_latency = config.balance == "p2c_ewma"
        self._faded_at = 0.0
        if not self.slow_start:
            # weights never change: selectors may read them once
            self.selector.fix_weights([float(p.base_weight) for p in self.primaries])
        self._quick = self._quick_pick()
        self.quick: Callable[[], Peer | None] | None = self._quick
        """A request's first try takes its peer from this when it is set: the group needs nothing from
        the request and nothing can take a peer out of service (None while a Retry-After holds)."""
        self._keyed = self._keyed_pick()
        self.keyed: Callable[[RequestContext], Peer | None] | None = self._keyed
        """Else from this, when it is set: the same for a group that hashes the client address or a header."""

    def _quick_pick(self) -> Callable[[], Peer | None] | None:
        # the selector's own pick, or an iterator that runs in C where it gives the same order
        if self.trivial:
            return itertools.repeat(self.peers[0]).__next__
        if not self.plain:
            return None
        if isinstance(self.selector, RoundRobin) and self.selector.equal_weights:
            return itertools.cycle(self.primaries).__next__  # equal weights: the peers in turn
        return self.selector.quick()  # type: ignore[return-value]

    def _keyed_pick(self) -> Callable[[RequestContext], Peer | None] | None:
        # finding the key and looking it up in the Maglev table in one frame; the other keys
        # (path, cookie, query) are rarer and take `select`
        selector = self.selector
        if not self.simple or self.sticky is not None or not isinstance(selector, Maglev) or not selector.table:
            return None
        table, slots, slot_of = selector.lookup()
        if self._hash_kind == "client_ip":

            def by_client_ip(ctx: RequestContext) -> Peer | None:
                key = ctx.client_ip.encode()
                slot = slots.get(key, -1)
                return table[slot if slot >= 0 else slot_of(key)]  # type: ignore[return-value]

            return by_client_ip
        if self._hash_kind == "header":
            name = self._hash_header
            anywhere = selector.pick

            def by_header(ctx: RequestContext) -> Peer | None:
                for field, value in ctx.headers:
                    if field.lower() == name:  # the first value, as ctx.header gives
                        slot = slots.get(value, -1)
                        return table[slot if slot >= 0 else slot_of(value)]  # type: ignore[return-value]
                return anywhere()  # type: ignore[return-value]

            return by_header
        return None

    # ------------------------------------------------------------------ selection
    def available(self, peer: Peer, now: float) -> bool:
        if not peer.active_ok or now < peer.retry_after_until:
            return False
        if peer.outlier is not None and peer.outlier.ejected(now):
            return False
        if peer.breaker is not None and not peer.breaker.allows(now):
            return False
        return not (self.max_outstanding and peer.active >= self.max_outstanding)

    def select(self, ctx: RequestContext, tried: tuple[Peer, ...] = ()) -> Peer | None:
        """A peer for this request, never one in `tried` when another is available; None if none is."""
        if self.trivial:
            return self.peers[0]
        if self.plain and not tried and (not self._retry_after_until or self.clock() >= self._retry_after_until):
            # nothing can take a peer out of service and no key is needed: no per-peer checks
            self._retry_after_until = 0.0
            self.quick = self._quick  # (a Retry-After that held has run out)
            return self.selector.pick()  # type: ignore[return-value]
        if self.simple and self.sticky is None and not tried and not self._retry_after_until:
            # nothing can take a peer out of service: the key alone decides, no clock needed
            return self.selector.pick(self._hash_input(ctx))  # type: ignore[return-value]
        now = self.clock()
        if self.sticky is not None and not tried:
            pinned = self.sticky_peer(ctx)
            if pinned is not None and self.available(pinned, now) and self._has_room(pinned):
                return pinned
        key = self._hash_input(ctx)
        if self.simple and not tried and now >= self._retry_after_until:
            # nothing can take a peer out of service: no per-peer checks
            self._retry_after_until = 0.0
            self.keyed = self._keyed  # (a Retry-After that held has run out)
            return self.selector.pick(key)  # type: ignore[return-value]
        selectors = (self.selector, self.backup_selector)
        # untried primaries, untried backups, then (a retry with nothing new left) any available peer
        for fresh_only in (True, False) if tried else (True,):
            for selector in selectors:
                if selector is None:
                    continue
                if fresh_only:
                    choice = selector.pick(key, lambda p: p not in tried and self._eligible(p, now))  # type: ignore[arg-type]
                else:
                    choice = selector.pick(key, lambda p: self._eligible(p, now))  # type: ignore[arg-type]
                if choice is not None:
                    assert isinstance(choice, Peer)
                    return choice
        return None

    def _eligible(self, peer: Peer, now: float) -> bool:
        return self.available(peer, now) and self._has_room(peer)

    def _has_room(self, peer: Peer) -> bool:
        return not peer.max_conns or peer.active < peer.max_conns

    def at_capacity(self) -> bool:
        """Every available peer is full (a request may wait for room)."""
        now = self.clock()
        candidates = [p for p in self.peers if self.available(p, now)]
        return bool(candidates) and all(p.max_conns and p.active >= p.max_conns for p in candidates)

    def _hash_input(self, ctx: RequestContext) -> bytes | None:
        kind = self._hash_kind
        if not kind:
            return None
        if kind == "client_ip":
            return ctx.client_ip.encode()
        if kind == "path":
            return ctx.path.encode()
        name = self._hash_name
        if kind == "header":
            return ctx.header(self._hash_header)
        if kind == "cookie":
            value = _cookie(ctx, name)
            return value.encode() if value is not None else None
        for part in ctx.query.split("&"):
            k, _, v = part.partition("=")
            if k == name:
                return v.encode()
        return None

    def sticky_peer(self, ctx: RequestContext) -> Peer | None:
        assert self.sticky is not None
        value = _cookie(ctx, self.sticky.cookie)
        if value is None:
            return None
        return self._by_token.get(value)

    # ------------------------------------------------------------------ outcomes
    def record(self, peer: Peer, ok: bool, elapsed: float | None) -> None:
        """Learn from how a try on `peer` went (ok: it answered, and not with a 5xx)."""
        if elapsed is not None and self.tracks_latency:
            peer.observe_latency(elapsed)
        if self.simple:
            return  # no breaker or ejection to feed
        now = self.clock()
        if peer.breaker is not None and peer.breaker.record(ok, now):
            self._changed(peer, f"circuit breaker {peer.breaker.state.value}")
            if ok:
                peer.recovered_at = now
        outlier = peer.outlier
        if outlier is not None and outlier.record(ok, now) and not outlier.ejected(now):
            ejected = sum(1 for p in self.peers if p.outlier is not None and p.outlier.ejected(now))
            if (ejected + 1) / len(self.peers) <= outlier.policy.max_ejected_share:
                duration = outlier.eject(now)
                peer.recovered_at = now + duration
                self._changed(peer, f"ejected for {duration:.0f}s: failure rate over the window")

    def fade_latencies(self, now: float) -> None:
        """Called a few times a second (the worker's watchdog): the latency average of a peer
        that has not answered for a while halves every _EWMA_HALF_LIFE seconds. Kept off the
        request path so that picking a peer reads no clock."""
        last, self._faded_at = self._faded_at, now
        if not last:
            return
        factor = 0.5 ** ((now - last) / _EWMA_HALF_LIFE)
        for peer in self.peers:
            if peer._answered:
                peer._answered = False
                peer._quiet_since = now
            elif peer.ewma and now - peer._quiet_since > _EWMA_FADE_AFTER:
                peer.ewma *= factor

    def retry_after(self, peer: Peer, seconds: float) -> None:
        peer.retry_after_until = self.clock() + min(seconds, 300.0)
        self._retry_after_until = max(self._retry_after_until, peer.retry_after_until)
        self.quick = self.keyed = None  # until it has run out, selection checks each peer

    def set_active_health(self, peer: Peer, ok: bool, reason: str) -> None:
        """From the master's active checks."""
        if ok != peer.active_ok:
            peer.active_ok = ok
            if not ok:
                self.simple = self.plain = False
                self.quick = self._quick = self.keyed = self._keyed = None
            peer.reason = reason
            if ok:
                peer.recovered_at = self.clock()

    def _changed(self, peer: Peer, reason: str) -> None:
        peer.reason = reason
        event(log, "peer_state", f"upstream {self.name} peer {peer.label}: {reason}",
              upstream=self.name, peer=peer.label, reason=reason)  # fmt: skip


def _cookie(ctx: RequestContext, name: str) -> str | None:
    header = ctx.header(b"cookie")
    if header is None:
        return None
    for part in header.decode("latin-1").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None
