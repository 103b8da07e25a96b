"""The immutable snapshot a worker serves: compiled listeners, routes and upstream groups,
plus the worker-wide hooks the engine reports to."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from portcullis.engine.watchdog import Watchdog
from portcullis.http.h1 import H1Settings
from portcullis.observability.access_log import AccessLog
from portcullis.observability.stats import WorkerStats

if TYPE_CHECKING:
    from portcullis.balancing.discovery import PeerDiscovery
    from portcullis.config.schema import Config
    from portcullis.engine.context import RequestContext
    from portcullis.engine.errors import ProxyError
    from portcullis.routing.router import Router
    from portcullis.upstream.group import UpstreamGroup

log = logging.getLogger("portcullis")


class ClientConnection(Protocol):
    """A client connection as the runtime sees it: closable when idle, with a deadline."""

    deadline: float

    def on_deadline(self) -> None: ...

    def close_if_idle(self) -> bool: ...


@dataclass(slots=True)
class ListenerRuntime:
    name: str
    host: str
    port: int
    scheme: str
    router: Router
    ssl_context: ssl.SSLContext | None = None


class Runtime:
    """Everything a request needs from the config, resolved once."""

    def __init__(
        self,
        config: Config,
        listeners: dict[str, ListenerRuntime],
        upstreams: dict[str, UpstreamGroup],
        watchdog: Watchdog,
        stats: WorkerStats,
        access_log: AccessLog | None,
        generation: int = 0,
    ) -> None:
        server = config.server
        self.config = config
        self.listeners = listeners
        self.upstreams = upstreams
        self.watchdog = watchdog
        self.clock = time.perf_counter  # the loop clock has only millisecond resolution
        self.stats = stats
        self.access_log = access_log
        self.generation = generation
        self.retired = False
        self.discoveries: list[PeerDiscovery] = []
        """A newer runtime serves new connections; this one's close after their current request."""
        self.request_id_header = server.request_id_header.encode()
        self.request_id_header_lower = self.request_id_header.lower()
        self.client_header_timeout = server.timeouts.client_header
        self.client_body_timeout = server.timeouts.client_body
        self.keepalive_timeout = server.timeouts.keepalive
        self.h1_settings = H1Settings(
            server.limits.max_request_line,
            server.limits.max_header_bytes,
            server.limits.max_headers,
            self.request_id_header_lower,
        )
        self.max_body = server.limits.max_body
        self._trusted = tuple(ipaddress.ip_network(c) for c in server.trusted_proxies)
        self.trusts_proxies = bool(self._trusted)
        self._watched = watchdog.watched  # (one call less per connection than watchdog.watch)
        # request ids: a random per-process prefix and a counter are unique and cost no syscall
        self._id_prefix = os.urandom(6).hex()
        # from 16**9 on, the counter has 10 hex digits without padding (for the next 2**40 requests)
        self._ids = itertools.count(16**9)
        self.connections: set[ClientConnection] = set()
        self._latency_tracking = [group for group in upstreams.values() if group.tracks_latency]

    def tick(self, now: float) -> None:
        """The watchdog's periodic upkeep for this configuration."""
        for group in self._latency_tracking:
            group.fade_latencies(now)

    def next_request_id(self) -> str:
        return self._id_prefix + hex(next(self._ids))[2:]

    def is_trusted(self, ip: str) -> bool:
        if not self._trusted or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    # ------------------------------------------------------------------ engine reports
    def connection_opened(self, conn: ClientConnection) -> None:
        """Counted, and its deadline watched, until `connection_closed`."""
        self.connections.add(conn)
        self._watched.add(conn)
        self.stats.connections_total += 1

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self._watched.discard(conn)

    def close_idle_connections(self) -> int:
        """Close every client connection that is between requests; the number still busy."""
        return sum(1 for conn in list(self.connections) if not conn.close_if_idle())

    def upstream_failed(self, upstream: str, peer: str, error: ProxyError) -> None:
        self.stats.upstream_failure(upstream, peer, error.kind.value)

    def retried(self, ctx: RequestContext, error: ProxyError) -> None:
        upstream = ctx.route.upstream.name if ctx.route is not None and ctx.route.upstream is not None else ""
        self.stats.upstream_retry(upstream, error.kind.value)

    def request_finished(self, ctx: RequestContext) -> None:
        """Every request ends here exactly once: metrics and the access log."""
        total = self.clock() - ctx.started
        route = ctx.route
        if route is not None:
            route.counters.count(ctx.method, ctx.status, total)
        else:
            self.stats.request("", ctx.method, ctx.status, total)
        if self.access_log is not None:
            self.access_log.write(ctx, total)

    def rejected(self, error: ProxyError, client_ip: str, request_id: str) -> None:
        """A request refused by the codec before it became an exchange."""
        self.stats.request("", "other", error.status, 0.0)
        self.stats.reject(error.kind.value)
        log.info("rejected request from %s (%s): %s", client_ip, request_id, error.detail)

    def retire(self, grace: float = 1.0) -> None:
        """A newer runtime has taken over: its connections answer with `Connection: close` and close after
        their request; those still idle `grace` seconds later are closed then (closing an idle connection
        at once races with a client that is sending its next request on it)."""
        self.retired = True
        stale = list(self.connections)
        self.watchdog.loop.call_later(grace, lambda: [conn.close_if_idle() for conn in stale])
        if self.access_log is not None:
            self.access_log.close()

    def gauges(self) -> dict[str, object]:
        idle = busy = 0
        for group in self.upstreams.values():
            for peer in group.peers:
                idle += peer.pool.idle_count
                busy += peer.pool.busy
        now = time.monotonic()
        peers = {
            name: {
                peer.url: {"state": peer.state(now), "reason": peer.reason, "active": peer.active, "ewma": peer.ewma}
                for peer in group.peers
            }
            for name, group in self.upstreams.items()
        }
        return {"connections_active": len(self.connections), "pool_idle": idle, "pool_busy": busy, "peers": peers}
