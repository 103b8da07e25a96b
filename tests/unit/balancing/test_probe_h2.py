"""Active health checks of HTTP/2 peers (balancing/probe_h2.py through active.probe), against a small
h2c server on loopback built on the `h2` state machine."""

from __future__ import annotations

import asyncio
import re

import h2.config
import h2.connection
import h2.events

from portcullis.balancing.active import peer_check, probe
from portcullis.config.schema import HealthCheck, Upstream


class _H2Server(asyncio.Protocol):
    """Answers GET /healthz with 200 and a JSON body, any other path with 503."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[b":path"]
                ok = path == b"/healthz"
                body = b'{"status": "ok"}' if ok else b"down"
                self.conn.send_headers(ev.stream_id, [(b":status", b"200" if ok else b"503")])
                self.conn.send_data(ev.stream_id, body, end_stream=True)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())


async def _check(policy: HealthCheck, http2: bool = True, pattern: bytes | None = None) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_H2Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await probe(f"h2://127.0.0.1:{port}", policy, re.compile(pattern) if pattern else None, http2)
    finally:
        server.close()


def test_get_over_http2_prior_knowledge() -> None:
    assert asyncio.run(_check(HealthCheck(path="/healthz"))) == (True, "health check answered 200")
    ok, reason = asyncio.run(_check(HealthCheck(path="/other")))
    assert not ok and "503" in reason


def test_body_pattern_over_http2() -> None:
    assert asyncio.run(_check(HealthCheck(path="/healthz"), pattern=rb'"status": *"ok"'))[0]
    ok, reason = asyncio.run(_check(HealthCheck(path="/healthz"), pattern=b"never"))
    assert not ok and "did not match" in reason


def test_http1_check_of_an_http2_server_fails() -> None:
    ok, reason = asyncio.run(_check(HealthCheck(path="/healthz", timeout=1.0), http2=False))
    assert not ok, reason


def test_checks_follow_the_peer_protocol() -> None:
    upstream = Upstream.model_validate({
        "peers": [{"url": "h2://10.0.0.1:50051"}, {"url": "https://10.0.0.2:8443"}],
        "http2": True, "health": {"grpc_service": ""},
    })  # fmt: skip
    plain = peer_check("u", "h2://10.0.0.1:50051", upstream, None)
    assert plain.http2 and plain.ssl is None
    secure = peer_check("u", "https://10.0.0.2:8443", upstream, None)
    assert secure.http2 and secure.ssl is not None and secure.server_name == "10.0.0.2"
