"""One worker: its event loop's listeners and the runtime they serve, swapped on reload."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from portcullis.config.schema import Config, Listener, ListenerTls
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.observability.events import event
from portcullis.observability.log_file import flush_shared, reopen_shared
from portcullis.server.edge import AlpnDispatch, EdgeH1Connection, ListenerEdge, PrefaceDispatch, build_edge, needs_edge
from portcullis.server.h1 import H1Connection
from portcullis.tls.acme import challenge_dirs, listener_certificates
from portcullis.tls.store import CertificateStore
from portcullis.tls.tickets import TicketKeys, binding, listener_label
from portcullis.worker.build import build_runtime, filters_of
from portcullis.worker.runtime import Runtime

log = logging.getLogger("portcullis")


def tls_context(tls: ListenerTls) -> ssl.SSLContext:
    """The listener's context: SNI picks among its certificates (see portcullis.tls.store)."""
    return CertificateStore(tls, ["h2", "http/1.1"] if tls.http2 else ["http/1.1"]).context


class Worker:
    """Serves the listeners on pre-bound sockets with the current runtime."""

    def __init__(
        self,
        config: Config,
        sockets: dict[str, list[socket.socket]],
        tickets: dict[str, list[bytes]] | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.services = Services()  # outlives reloads: pools, stats
        self.servers: list[asyncio.Server] = []
        self.runtime: Runtime | None = None
        self.watchdog: Watchdog | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.stores: dict[str, CertificateStore] = {}
        self._cert_watch: asyncio.TimerHandle | None = None
        self.ticket_secrets = tickets or {}
        """Each TLS listener's session-ticket secrets from the master, newest first."""
        self.tickets: dict[str, TicketKeys] = {}

    async def start(self, generation: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.watchdog = Watchdog(loop)
        self.watchdog.on_tick = self._tick
        self.watchdog.start()
        self.runtime = build_runtime(self.config, self.services, self.watchdog, generation)
        await self._start_filters(self.runtime)
        self._start_discovery(self.runtime)
        for listener in self.config.listeners:
            store = None
            if listener.tls is not None:
                alpn = ["h2", "http/1.1"] if listener.tls.http2 else ["http/1.1"]
                store = CertificateStore(listener.tls, alpn, listener_certificates(listener.name, listener.tls))
                self.stores[listener.name] = store
                self._share_tickets(listener, store)
            edge = build_edge(listener, self.config.server, store, challenge_dirs(self.config))
            factory = self._factory(listener.name, edge)
            for sock in self.sockets[listener.name]:  # the listener's shards (portcullis.supervisor.sockets)
                server = await loop.create_server(
                    factory, sock=sock, ssl=store.context if store is not None else None, backlog=1024
                )
                self.servers.append(server)
        self._schedule_flush()
        self._schedule_cert_watch()

    def _factory(self, name: str, edge: ListenerEdge) -> Callable[[], asyncio.Protocol]:
        def make() -> H1Connection:
            runtime = self.runtime
            assert runtime is not None
            return H1Connection(runtime, runtime.listeners[name])

        if not edge.h2 and not needs_edge(edge):
            return make  # nothing configured beyond HTTP/1.1: zero cost

        def make_h1() -> asyncio.Protocol:
            runtime = self.runtime
            assert runtime is not None
            return EdgeH1Connection(runtime, runtime.listeners[name], edge)

        if not edge.h2:
            return make_h1

        def make_h2() -> asyncio.Protocol:
            from portcullis.server.h2 import H2Connection

            runtime = self.runtime
            assert runtime is not None
            return H2Connection(runtime, runtime.listeners[name], edge)

        h1 = make_h1 if needs_edge(edge) else make
        if edge.store is not None:
            return lambda: AlpnDispatch(h1, make_h2)
        return lambda: PrefaceDispatch(h1, make_h2)

    def _share_tickets(self, listener: Listener, store: CertificateStore) -> None:
        """Session tickets with the master's keys, so every worker resumes every worker's sessions."""
        if listener.tls is None or listener.tls.session_tickets is None:
            return
        lib = binding()
        if lib is not None:
            self.tickets[listener.name] = TicketKeys(listener_label(listener), lib)
            self._apply_tickets(listener.name)

    def set_ticket_secrets(self, secrets: dict[str, list[bytes]]) -> None:
        """New secrets from the master (a rotation): new tickets use the newest at once."""
        self.ticket_secrets = secrets
        for name in list(self.tickets):
            self._apply_tickets(name)

    def _apply_tickets(self, name: str) -> None:
        keys, secrets = self.tickets[name], self.ticket_secrets.get(name)
        if not secrets:
            return  # OpenSSL's own keys until the master's arrive
        keys.update(secrets)
        if not keys.installed and not keys.install(self.stores[name].context):
            del self.tickets[name]

    def _schedule_cert_watch(self) -> None:
        """Poll the certificate files; a renewed file serves new handshakes without a restart."""
        intervals = [
            lst.tls.watch_interval for lst in self.config.listeners if lst.tls is not None and lst.tls.watch_interval
        ]
        if not intervals or self.watchdog is None:
            return
        interval = min(intervals)

        def check() -> None:
            for store in self.stores.values():
                try:
                    store.refresh()
                except Exception:  # the watcher must keep running
                    log.exception("certificate watch failed")
            if self.watchdog is not None:
                self._cert_watch = self.watchdog.loop.call_later(interval, check)

        self._cert_watch = self.watchdog.loop.call_later(interval, check)

    async def _start_filters(self, runtime: Runtime) -> None:
        """Let each filter open what it needs (clients, key sets ...) before it serves."""
        for flt in filters_of(runtime):
            await flt.start(self.services)

    async def _close_filters(self, runtime: Runtime, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)  # requests of the old generation may still use them
        for flt in filters_of(runtime):
            try:
                await flt.close()
            except Exception:
                log.exception("closing a filter failed")

    def _tick(self, now: float) -> None:
        if self.runtime is not None:
            self.runtime.tick(now)

    async def swap(self, config: Config, generation: int) -> None:
        """Provision the new runtime completely, then let new connections use it."""
        assert self.watchdog is not None
        fresh = build_runtime(config, self.services, self.watchdog, generation)
        await self._start_filters(fresh)
        old, self.runtime, self.config = self.runtime, fresh, config
        self._start_discovery(fresh)
        if old is not None:
            for discovery in old.discoveries:
                asyncio.get_running_loop().create_task(discovery.stop())
            old.retire()
            task = asyncio.get_running_loop().create_task(self._close_filters(old, config.server.timeouts.shutdown))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            # its requests still in flight log to the current file (the retired log is closed, never flushed)
            old.access_log = fresh.access_log
            # connections of the old generation still refer to it until they close
            fresh.connections.update(old.connections)
            old.connections = fresh.connections
        event(log, "config_applied", "new configuration serving", generation=generation)

    def snapshot(self) -> dict[str, Any]:
        runtime = self.runtime
        assert runtime is not None
        return runtime.stats.snapshot(runtime.gauges())

    def _start_discovery(self, runtime: Runtime) -> None:
        for discovery in runtime.discoveries:
            discovery.start()

    def set_health(self, upstream: str, url: str, ok: bool, reason: str) -> None:
        """An active check result from the master."""
        runtime = self.runtime
        group = runtime.upstreams.get(upstream) if runtime is not None else None
        if group is None:
            return
        for peer in group.peers:
            if url in (peer.url, peer.origin):  # a host name's check stands for all its addresses
                group.set_active_health(peer, ok, reason)

    def reopen_logs(self) -> None:
        if self.runtime is not None and self.runtime.access_log is not None:
            self.runtime.access_log.reopen()
        reopen_shared()  # the WAF audit logs

    def _schedule_flush(self) -> None:
        if self.watchdog is None:
            return
        if self.runtime is not None and self.runtime.access_log is not None:
            self.runtime.access_log.flush()
        flush_shared()
        self._flusher = self.watchdog.loop.call_later(0.25, self._schedule_flush)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), then close the rest."""
        for server in self.servers:
            server.close()
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        if runtime is not None:
            runtime.retired = True
            while runtime.close_idle_connections() > 0 and loop.time() < end:
                await asyncio.sleep(0.05)
            for group in runtime.upstreams.values():
                for peer in group.peers:
                    peer.pool.close_all()
            if runtime.access_log is not None:
                runtime.access_log.close()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._cert_watch is not None:
            self._cert_watch.cancel()
        if runtime is not None:
            await self._close_filters(runtime)
        if self.watchdog is not None:
            self.watchdog.stop()
