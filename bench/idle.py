"""RSS per idle keep-alive connection.

Open N connections to the proxy, send one ``GET /small`` on each and read the whole
response, then leave them idle. The proxy's RSS (summed over its process tree) is read
before and after; the difference divided by N is the cost of one idle keep-alive connection.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpclient
from procs import Managed


@dataclass(frozen=True)
class IdleResult:
    requested: int
    opened: int
    still_open: int
    rss_before_kib: int
    rss_after_kib: int
    seconds_to_open: float
    error: str | None = None

    @property
    def bytes_per_connection(self) -> float | None:
        if self.still_open <= 0:
            return None
        return (self.rss_after_kib - self.rss_before_kib) * 1024 / self.opened

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_connection": self.bytes_per_connection}


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _settled_rss(server: Managed, settle_s: float) -> int:
    """RSS after it stopped moving (two equal readings 0.2 s apart), at most settle_s later."""
    deadline = time.monotonic() + settle_s
    last = server.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server.rss_kib()
        if now == last:
            break
        last = now
    return last


def _count_open(socks: list[socket.socket]) -> int:
    """Connections the server has not closed: nothing readable (no EOF, no stray bytes)."""
    open_count = 0
    for start in range(0, len(socks), 512):
        batch = socks[start : start + 512]
        poller = select.poll()
        for sock in batch:
            poller.register(sock, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}
        open_count += sum(1 for sock in batch if sock.fileno() not in readable)
    return open_count


def measure(
    server: Managed,
    port: int,
    count: int,
    *,
    host: str = "127.0.0.1",
    path: str = "/small",
    time_limit_s: float = 60.0,
    settle_s: float = 3.0,
) -> IdleResult:
    ensure_fd_limit(count + 256)
    # Warm up first so one-time allocations (first connection, first upstream request)
    # are not charged to the idle connections.
    for _ in range(20):
        httpclient.get(host, port, path)
    before = _settled_rss(server, settle_s)
    socks: list[socket.socket] = []
    error: str | None = None
    request = httpclient.request_bytes(host, port, path)
    started = time.monotonic()
    try:
        for _ in range(count):
            if time.monotonic() - started > time_limit_s:
                error = f"stopped after {time_limit_s:.0f}s with {len(socks)} connections open"
                break
            sock = socket.create_connection((host, port), timeout=5.0)
            socks.append(sock)
            sock.sendall(request)
            response = httpclient.read_response(sock)
            if response.status != 200:
                error = f"GET {path} gave {response.status}"
                break
        seconds = time.monotonic() - started
        after = _settled_rss(server, settle_s)
        still_open = _count_open(socks)
        if error is None and still_open < len(socks):
            error = f"the server closed {len(socks) - still_open} of the idle connections"
    except (OSError, httpclient.HttpError) as exc:
        seconds = time.monotonic() - started
        after = server.rss_kib()
        still_open = 0
        error = f"after {len(socks)} connections: {exc}"
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    return IdleResult(
        requested=count,
        opened=len(socks),
        still_open=still_open,
        rss_before_kib=before,
        rss_after_kib=after,
        seconds_to_open=round(seconds, 3),
        error=error,
    )
