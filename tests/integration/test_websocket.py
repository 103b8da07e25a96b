"""WebSocket through the proxy: the Upgrade handshake is forwarded, then bytes flow untouched both ways."""

from __future__ import annotations

import base64
import os
import struct
import threading
import time

import pytest
from harness import Proxy, RawConnection
from websockets.sync.client import connect

pytestmark = pytest.mark.integration


def _ws_url(proxy: Proxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/ws"


def test_websocket_echo_text_and_binary(proxy: Proxy) -> None:
    with connect(_ws_url(proxy), open_timeout=5, close_timeout=5) as ws:
        ws.send("hello through the tunnel")
        assert ws.recv(timeout=5) == "hello through the tunnel"
        blob = os.urandom(100_000)
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
        for i in range(50):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=5) for _ in range(50)] == [f"message {i}" for i in range(50)]
        ws.ping().wait(5)


def test_websocket_large_message(proxy: Proxy) -> None:
    big = os.urandom(4 * 1024 * 1024)
    with connect(_ws_url(proxy), open_timeout=5, close_timeout=5, max_size=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=20) == big


def test_websockets_are_independent(proxy: Proxy) -> None:
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with connect(_ws_url(proxy), open_timeout=5, close_timeout=5) as ws:
                for i in range(20):
                    ws.send(f"{n}:{i}")
                    assert ws.recv(timeout=5) == f"{n}:{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def _masked_text_frame(text: bytes) -> bytes:
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return struct.pack("!BB", 0x81, 0x80 | len(text)) + mask + payload


def test_frame_sent_with_the_handshake_is_not_lost(proxy: Proxy) -> None:
    """A client may send its first frame right behind the request head, before the 101."""
    key = base64.b64encode(os.urandom(16))
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with RawConnection(proxy.port) as conn:
        conn.send(handshake + _masked_text_frame(b"early bird"))
        resp = conn.read_response()
        assert resp.status == 101
        assert resp.header("Upgrade").lower() == "websocket"  # type: ignore[union-attr]
        assert resp.header("Sec-WebSocket-Accept")
        while len(conn.buf) < 12:
            conn._fill(time.monotonic() + 5)
        assert bytes(conn.buf[:12]) == b"\x81\x0aearly bird"


def test_upgrade_refused_by_the_upstream_is_a_plain_response(proxy: Proxy) -> None:
    """/echo does not switch protocols: the client gets its 200 and no tunnel."""
    with RawConnection(proxy.port) as conn:
        conn.send(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        resp = conn.read_response()
        assert resp.status == 200
        seen = {k.lower(): v for k, v in resp.json()["headers"]}
        assert seen["upgrade"] == "websocket"  # the upgrade was offered to the peer
        assert seen["connection"].lower() == "upgrade"
