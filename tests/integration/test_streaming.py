"""Large bodies stream through in both directions with bounded memory, including slow readers on either side.

The proxy's VmRSS (from /proc/PID/status) is sampled during each transfer.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness import Proxy, RawConnection, RssSampler, Upstream, base_config, pattern_chunks, pattern_sha256

pytestmark = pytest.mark.integration

GIB = 1 << 30
MIB = 1 << 20
RSS_LIMIT_KB = 100 * 1024
"""The whole proxy process must stay under this while gigabytes go through it."""
TRANSFER_TIME_LIMIT = 60.0


@pytest.fixture(scope="module")
def big_proxy(make_proxy: Callable[[dict[str, Any]], Proxy], upstream: Upstream) -> Proxy:
    return make_proxy(base_config(upstream, limits={"max_body": "2GiB"}))


@pytest.fixture(scope="module")
def gib_sha256() -> str:
    return pattern_sha256(GIB)


def _report(what: str, seconds: float, sampler: RssSampler, baseline_kb: int) -> None:
    print(
        f"\n{what}: {seconds:.1f}s, {GIB / MIB / seconds:.0f} MiB/s, proxy VmRSS max {sampler.max_kb / 1024:.1f} MiB "
        f"(baseline {baseline_kb / 1024:.1f} MiB, {len(sampler.samples)} samples)"
    )


def test_1gib_download_streams_with_bounded_memory(big_proxy: Proxy, gib_sha256: str) -> None:
    baseline = big_proxy.rss_kb()
    digest = hashlib.sha256()
    received = 0
    start = time.monotonic()
    with RssSampler(big_proxy.pid) as sampler, httpx.stream("GET", f"{big_proxy.url}/stream/{GIB}", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(GIB)
        for chunk in r.iter_raw(MIB):
            digest.update(chunk)
            received += len(chunk)
    elapsed = time.monotonic() - start
    _report("1 GiB download", elapsed, sampler, baseline)
    assert received == GIB
    assert digest.hexdigest() == gib_sha256
    assert sampler.max_kb < RSS_LIMIT_KB
    assert elapsed < TRANSFER_TIME_LIMIT


def test_1gib_upload_streams_with_bounded_memory(big_proxy: Proxy, gib_sha256: str) -> None:
    baseline = big_proxy.rss_kb()

    def body() -> Iterator[bytes]:  # generated on the fly: the client holds 256 KiB at a time
        yield from pattern_chunks(GIB)

    start = time.monotonic()
    with RssSampler(big_proxy.pid) as sampler:
        r = httpx.post(f"{big_proxy.url}/upload", content=body(), headers={"Content-Length": str(GIB)}, timeout=60)
    elapsed = time.monotonic() - start
    _report("1 GiB upload", elapsed, sampler, baseline)
    assert r.status_code == 200
    assert r.json() == {"length": GIB, "sha256": gib_sha256}
    assert sampler.max_kb < RSS_LIMIT_KB
    assert elapsed < TRANSFER_TIME_LIMIT


def test_large_chunked_upload_and_download(big_proxy: Proxy) -> None:
    size = 256 * MIB
    expected = pattern_sha256(size)

    def body() -> Iterator[bytes]:  # no length: httpx sends it chunked
        yield from pattern_chunks(size, size=100_000)

    with RssSampler(big_proxy.pid) as sampler:
        r = httpx.post(f"{big_proxy.url}/upload", content=body(), timeout=60)
        assert r.json() == {"length": size, "sha256": expected}
        digest = hashlib.sha256()
        with httpx.stream("GET", f"{big_proxy.url}/chunked/{size}", timeout=30) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            for chunk in resp.iter_raw(MIB):
                digest.update(chunk)
        assert digest.hexdigest() == expected
    assert sampler.max_kb < RSS_LIMIT_KB


def test_slow_reading_client_pauses_the_upstream(big_proxy: Proxy) -> None:
    """The client stops reading for 3 s mid-download: the proxy must stop reading its peer, not buffer."""
    with RawConnection(big_proxy.port, timeout=30) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        conn.send(b"GET /stream/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % GIB)
        got = 0
        while got < 20 * MIB:
            got += len(conn.sock.recv(MIB))
        with RssSampler(big_proxy.pid) as sampler:
            time.sleep(3.0)  # at the upstream's speed, ~1 GB would pile up without backpressure
        stalled_max = sampler.max_kb
        with RssSampler(big_proxy.pid) as sampler:
            while True:
                data = conn.sock.recv(MIB)
                if not data:
                    break
                got += len(data)
    print(f"\nslow client: proxy VmRSS max {stalled_max / 1024:.1f} MiB stalled, {sampler.max_kb / 1024:.1f} MiB after")
    assert stalled_max < RSS_LIMIT_KB
    assert sampler.max_kb < RSS_LIMIT_KB
    head_len = got - GIB
    assert 100 < head_len < 1000  # everything arrived: the head plus exactly 1 GiB


def test_slow_reading_upstream_pauses_the_client(big_proxy: Proxy) -> None:
    """The upstream reads nothing for 3 s while the client pushes 512 MiB: the proxy must stop reading it."""
    size = 512 * MIB
    expected = pattern_sha256(size)

    def body() -> Iterator[bytes]:
        yield from pattern_chunks(size)

    with RssSampler(big_proxy.pid) as sampler:
        r = httpx.post(
            f"{big_proxy.url}/slow-upload/3", content=body(), headers={"Content-Length": str(size)}, timeout=60
        )
    assert r.json() == {"length": size, "sha256": expected}
    print(f"\nslow upstream: proxy VmRSS max {sampler.max_kb / 1024:.1f} MiB")
    assert sampler.max_kb < RSS_LIMIT_KB


def test_back_to_back_large_downloads_never_stall(big_proxy: Proxy) -> None:
    """Regression: when the last read of a response paused the peer connection (the client was
    slower for a moment), that connection went back to the pool still paused, and the next request
    on it waited forever. Statistical: many fast large downloads, each followed by a small request
    that must be answered promptly."""
    sizes = [32 * MIB + i * 7777 for i in range(24)]
    with httpx.Client(base_url=big_proxy.url, timeout=httpx.Timeout(10, read=5)) as client:
        for i, size in enumerate(sizes):
            path = ("/chunked/%d", "/stream/%d", "/size/%d")[i % 3] % size
            received = 0
            with client.stream("GET", path) as r:
                for chunk in r.iter_raw(MIB):
                    received += len(chunk)
            assert received == size
            assert client.get("/echo").status_code == 200
