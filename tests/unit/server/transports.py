"""For connection tests: a transport that records what is written to it, and a runtime of one
route to one peer with a connection to that peer waiting in its pool."""

from __future__ import annotations

import asyncio
from typing import Any

from portcullis.config import load_config_text
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.upstream.connection import UpstreamConnection
from portcullis.worker.build import build_runtime
from portcullis.worker.runtime import Runtime

CONFIG = """
listeners: [{name: web, listen: 127.0.0.1:8080}]
upstreams: {app: {peers: [{url: http://127.0.0.1:9}]}}
routes: [{name: all, upstream: app}]
"""


class Transport:
    def __init__(self, peer: tuple[str, int], half_close: bool = True) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closed = False
        self.half_close = half_close  # False: like TLS, which cannot send a FIN alone
        self.eof_written = False

    def can_write_eof(self) -> bool:
        return self.half_close

    def write_eof(self) -> None:
        self.eof_written = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def runtime_with_pooled_upstream(loop: asyncio.AbstractEventLoop) -> tuple[Runtime, UpstreamConnection, Transport]:
    """The runtime of CONFIG, and an idle connection to its peer (on a recording transport),
    which the first request takes from the pool."""
    runtime = build_runtime(load_config_text(CONFIG, "test.yaml", "."), Services(), Watchdog(loop))
    peer = runtime.upstreams["app"].peers[0]
    transport = Transport(("127.0.0.1", 9))
    upstream = UpstreamConnection(peer.pool, runtime.watchdog)
    upstream.connection_made(transport)  # type: ignore[arg-type]
    peer.pool.release(upstream, 0)
    return runtime, upstream, transport
