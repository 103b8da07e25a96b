"""Run one worker: its event loop, its listeners and its runtime."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl

from portcullis.config.schema import Config, ListenerTls
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.server.h1 import H1Connection
from portcullis.worker.build import build_runtime
from portcullis.worker.runtime import ListenerRuntime, Runtime

log = logging.getLogger("portcullis")


def tls_context(tls: ListenerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    first = tls.certificates[0]
    ctx.load_cert_chain(first.cert, first.key)
    ctx.set_alpn_protocols(["http/1.1"])
    if tls.client_auth is not None:
        ctx.load_verify_locations(tls.client_auth.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_auth.required else ssl.CERT_OPTIONAL
    return ctx


class Worker:
    """Serves the listeners on pre-bound sockets with the current runtime."""

    def __init__(
        self, config: Config, sockets: dict[str, socket.socket], services: Services | None = None
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.services = services or Services()
        self.servers: list[asyncio.Server] = []
        self.runtime: Runtime | None = None
        self.watchdog: Watchdog | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.watchdog = Watchdog(loop)
        self.watchdog.start()
        self.runtime = build_runtime(self.config, self.services, self.watchdog)
        tls_by_name = {lst.name: lst.tls for lst in self.config.listeners}
        for name, listener in self.runtime.listeners.items():
            tls = tls_by_name[name]
            listener.ssl_context = tls_context(tls) if tls is not None else None
            server = await loop.create_server(
                self._factory(name), sock=self.sockets[name], ssl=listener.ssl_context, backlog=1024
            )
            self.servers.append(server)

    def _factory(self, name: str) -> type[asyncio.Protocol] | object:
        def make() -> H1Connection:
            runtime = self.runtime
            assert runtime is not None
            listener: ListenerRuntime = runtime.listeners[name]
            return H1Connection(runtime, listener)

        return make

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), then close the rest."""
        for server in self.servers:
            server.close()
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while runtime is not None and runtime.close_idle_connections() > 0 and loop.time() < end:
            await asyncio.sleep(0.05)
        for group in runtime.upstreams.values() if runtime else ():
            for peer in group.peers:
                peer.pool.close_all()
        if self.watchdog is not None:
            self.watchdog.stop()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
