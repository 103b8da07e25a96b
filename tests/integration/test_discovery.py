"""Peers from a watched file and from host names resolved again, with the real proxy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration


def _servers(proxy: Proxy, count: int) -> set[str]:
    seen = set()
    with httpx.Client(base_url=proxy.url, timeout=5.0) as client:
        for _ in range(count):
            response = client.get("/echo")
            assert response.status_code == 200
            seen.add(response.json()["server"])
    return seen


def test_peer_file_changes_are_followed(
    make_upstream: Callable[[str], Upstream], make_proxy: Callable[[dict[str, Any]], Proxy], tmp_path: Any
) -> None:
    first, second = make_upstream("file-a"), make_upstream("file-b")
    peers = tmp_path / "peers.yaml"
    peers.write_text(json.dumps([{"url": first.url}]))
    proxy = make_proxy({
        "upstreams": {"app": {"discovery": {"file": str(peers), "watch_interval": "200ms"}}},
        "routes": [{"name": "all", "upstream": "app"}],
    })  # fmt: skip
    assert _servers(proxy, 5) == {first.name}
    peers.write_text(json.dumps([{"url": second.url}]))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _servers(proxy, 3) != {second.name}:
        time.sleep(0.1)
    assert _servers(proxy, 6) == {second.name}
    # a broken file keeps the peers it had
    peers.write_text("[{url: nope")
    time.sleep(0.6)
    assert _servers(proxy, 4) == {second.name}


def test_host_name_peers_are_resolved_to_addresses(
    make_upstream: Callable[[str], Upstream], make_proxy: Callable[[dict[str, Any]], Proxy]
) -> None:
    up = make_upstream("dns")
    proxy = make_proxy({
        "upstreams": {"app": {
            "peers": [{"url": f"http://localhost:{up.port}"}],
            "discovery": {"resolve_interval": "1s"},
        }},
        "routes": [{"name": "all", "upstream": "app"}],
    })  # fmt: skip
    assert _servers(proxy, 4) == {up.name}
    log = proxy.log_text()
    assert '"event": "peers_changed"' in log
    assert f"http://127.0.0.1:{up.port}" in log
