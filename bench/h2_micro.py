"""Per-request cost of the HTTP/2 server path, without TLS, sockets to the client or a load tool.

Drives `portcullis.server.h2.H2Connection` (and the real runtime, router and exchange) with a
fake transport: client frames are encoded up front (streams of `h2load -m10`-like GETs, ten per
batch, the client's windows wide open) and fed batch after batch; the answers come from a
`respond` route (`--mode respond`) or from a tiny HTTP/1.1 upstream in the same event loop
(`--mode upstream`, the proxied path). Prints microseconds per request; `--profile` adds cProfile.

    python3 bench/h2_micro.py --mode upstream
    python3 bench/h2_micro.py --mode respond --profile

A measurement, not a test: compare two trees in the same conditions, a few runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.settings
import h2.stream
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portcullis.config import load_config_text
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.server.edge import build_edge
from portcullis.server.h2 import H2Connection
from portcullis.worker.build import build_runtime

BODY = b"x" * 100
UPSTREAM_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 100\r\nConnection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\n" + BODY
)
REQUEST = [
    (b":method", b"GET"), (b":path", b"/small"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"),
    (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0"),
]  # fmt: skip
PER_BATCH = 10


class Upstream(asyncio.Protocol):
    """Answers every request head with the same small response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            self.buf = self.buf[end + 4 :]
            self.transport.write(UPSTREAM_ANSWER)


class FakeTransport(asyncio.Transport):
    """Counts what the server writes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = self.writes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def client_frames(requests: int) -> tuple[bytes, list[bytes]]:
    """The client's preface and settings, then one chunk of bytes per batch of streams."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.increment_flow_control_window(2**31 - 1 - 65535)
    preface = client.data_to_send()
    batches = []
    for _ in range(requests // PER_BATCH):
        for _ in range(PER_BATCH):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        batches.append(client.data_to_send())
        # the answers are never read: let the client count these streams as done
        for stream in client.streams.values():
            stream.state_machine.state = h2.stream.StreamState.CLOSED
        client.streams.clear()
    return preface, batches


async def measure(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    upstream_port = 1
    if args.mode == "upstream":
        server = await loop.create_server(Upstream, "127.0.0.1", 0)
        upstream_port = server.sockets[0].getsockname()[1]
        route = "{name: r, upstream: up}"
    else:
        route = '{name: r, filters: [{type: respond, status: 200, body: "' + BODY.decode() + '"}]}'
    text = (
        "listeners: [{name: web, listen: 127.0.0.1:9, h2c: true}]\n"
        f'upstreams: {{up: {{peers: [{{url: "http://127.0.0.1:{upstream_port}"}}]}}}}\n'
        f"routes: [{route}]\n"
    )
    config = load_config_text(text, "h2_micro.yaml", str(Path.cwd()))
    watchdog = Watchdog(loop)
    watchdog.start()
    runtime = build_runtime(config, Services(), watchdog, 1)
    edge = build_edge(config.listeners[0], config.server, None, ())
    preface, batches = client_frames(args.requests)
    conn, transport = H2Connection(runtime, runtime.listeners["web"], edge), FakeTransport()
    conn.connection_made(transport)
    conn.data_received(preface)

    async def feed(chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            conn.data_received(chunk)
            for _ in range(args.spins):  # the exchanges (and the upstream) finish in a few rounds
                await asyncio.sleep(0)

    warm = max(1, len(batches) // 10)
    await feed(batches[:warm])
    sent, writes = transport.bytes, transport.writes
    profile = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    await feed(batches[warm:])
    if profile is not None:
        profile.disable()
    elapsed = time.perf_counter() - started
    done = (len(batches) - warm) * PER_BATCH
    print(
        f"{args.mode}: {done} requests, {1e6 * elapsed / done:.1f} us/request ({done / elapsed:,.0f}/s); "
        f"{(transport.bytes - sent) / done:.0f} bytes/request, "
        f"{(transport.writes - writes) / (done / PER_BATCH):.2f} writes per {PER_BATCH} requests; "
        f"streams left open: {len(conn.streams)}"
    )
    if profile is not None:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
    watchdog.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["respond", "upstream"], default="upstream")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--spins", type=int, default=6, help="event loop rounds after each batch")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    uvloop.run(measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
