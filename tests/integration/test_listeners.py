"""A listener is a group of sockets on its address (`shards`), all served by every worker, and
an address something already listens on is refused."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import Proxy, listening_on
from ops_helpers import new_connection_get

from portcullis.supervisor.sockets import SHARDING

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHARDING, reason="listener shards need Linux's SO_REUSEPORT"),
]

OK_ROUTE = {"name": "ok", "match": {"path_prefix": "/"}, "filters": [{"type": "respond", "status": 200, "body": "ok"}]}


def _config(**listener: Any) -> dict[str, Any]:
    return {"workers": 2, "listeners": [listener], "routes": [OK_ROUTE]}


def test_every_shard_of_a_listener_is_served(make_proxy: Callable[[dict[str, Any]], Proxy]) -> None:
    proxy = make_proxy(_config())
    assert listening_on(proxy.port) == 8  # the default
    # new connections land on all eight sockets (by the hash of their ports): none goes unanswered
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: new_connection_get(f"{proxy.url}/n/{i}", timeout=5), range(200)))
    assert [r.status_code for r in replies] == [200] * 200
    assert {r.content for r in replies} == {b"ok"}


def test_one_shard_is_one_socket(make_proxy: Callable[[dict[str, Any]], Proxy]) -> None:
    proxy = make_proxy(_config(shards=1))
    assert listening_on(proxy.port) == 1
    assert new_connection_get(f"{proxy.url}/").status_code == 200
    # bound alone: not even a socket that offers to share the address may join it
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="Address already in use"):
            intruder.bind(("127.0.0.1", proxy.port))


def test_a_second_proxy_on_the_same_address_is_refused(
    make_proxy: Callable[[dict[str, Any]], Proxy], tmp_path: Path
) -> None:
    """The sockets of a group accept partners on their address; the second proxy must not be one."""
    first = make_proxy(_config())
    text = f"listeners: [{{name: web, listen: '127.0.0.1:{first.port}'}}]\nroutes: [{OK_ROUTE}]\n"
    (tmp_path / "second.yaml").write_text(text.replace("'", '"'))
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "run", "-c", "second.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in result.stdout + result.stderr
    assert listening_on(first.port) == 8
    assert first.alive() and new_connection_get(f"{first.url}/").status_code == 200
