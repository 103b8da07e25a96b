"""Reloads: SIGHUP and POST /api/reload under a steady load lose no request, a listener move starts a new
generation of workers on the new port, and a broken file is refused while the old config keeps serving."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import RawConnection, Upstream, free_port, listening_on, wait_until
from ops_helpers import (
    OpsProxy,
    OpsProxyFactory,
    new_connection_get,
    ops_config,
    ops_proxies,
    pid_alive,
    respond_route,
)

from portcullis.supervisor.sockets import SHARDING

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def r_upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("reload")


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "ops-reload") as f:
        yield f


@pytest.fixture(scope="module")
def shared(factory: OpsProxyFactory, r_upstream: Upstream) -> OpsProxy:
    """One worker, reloaded in place by several tests (each relative to the generation it finds)."""
    return factory(
        ops_config(r_upstream, workers=1, routes=[
            respond_route("v1", "/version", "v1\n"),
            {"name": "backend", "match": {"path_prefix": "/"}, "upstream": "main"},
        ])
    )  # fmt: skip


def _reload(proxy: OpsProxy) -> dict[str, Any]:
    return proxy.reload_signal(proxy.status()["generation"] + 1)


def _add_route(name: str, body: str) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        cfg["routes"].insert(0, respond_route(name, f"/{name}", body))

    return change


class Hammer:
    """`threads` keep-alive clients sending GET requests back to back until stopped; every outcome recorded."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                path = f"/echo/t{index}/{n}"
                try:
                    r = client.get(path)
                    good = r.status_code == 200 and r.json()["target"] == path
                    outcome = "" if good else f"{path}: {r.status_code} {r.text[:200]!r}"
                except Exception as exc:  # every failure counts, whatever its kind
                    outcome = f"{path}: {type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome:
                        self.failures.append(outcome)
                    else:
                        self.ok += 1

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        assert not any(t.is_alive() for t in self._threads), "a client thread hangs"


def test_reloads_under_load_lose_no_request(factory: OpsProxyFactory, r_upstream: Upstream) -> None:
    proxy = factory(ops_config(r_upstream, workers=2))
    pids = set(proxy.worker_pids())
    with Hammer(proxy.url, threads=4) as hammer:
        time.sleep(0.5)
        for n in (1, 2, 3):
            proxy.rewrite(_add_route(f"added-{n}", f"route {n}\n"))
            if n == 2:
                r = proxy.reload_api()
                assert r.status_code == 200, r.text
                assert r.json() == {"reloaded": True, "generation": 1 + n, "error": None}
            else:
                proxy.reload_signal(1 + n)
            time.sleep(0.8)
        ok_before_stop = hammer.ok
    assert hammer.failures == [], (
        f"{len(hammer.failures)} failed (of {hammer.ok + len(hammer.failures)}): " + "\n".join(hammer.failures[:20])
    )
    assert ok_before_stop >= 200, f"too little load to prove anything: {ok_before_stop} requests"

    status = proxy.status()
    assert status["generation"] == 4 and status["reloads"] == 3 and status["last_reload_error"] is None, status
    # an in-place reload keeps the worker processes, on the new generation
    assert set(proxy.worker_pids()) == pids
    assert all(w["generation"] == 4 for w in status["workers"]), status
    for n in (1, 2, 3):
        for _ in range(6):  # new connections, so both workers are asked
            r = new_connection_get(f"{proxy.url}/added-{n}")
            assert r.status_code == 200 and r.text == f"route {n}\n", (r.status_code, r.text)
    events = [e["event"] for e in proxy.events() if e.get("process") == "master"]
    assert events.count("reloaded") == 3, events
    metrics = proxy.metrics()
    assert metrics["portcullis_reloads_total"][()] == 3
    assert metrics["portcullis_config_generation"][()] == 4


def test_reload_keeps_the_upstream_connection_pool(shared: OpsProxy, r_upstream: Upstream) -> None:
    with httpx.Client(base_url=shared.url, timeout=10) as client:
        assert client.get("/echo/warm").status_code == 200
    connections = r_upstream.stats()["connections"]
    shared.rewrite(_add_route("pooled", "x"))
    _reload(shared)
    with httpx.Client(base_url=shared.url, timeout=10) as client:
        for i in range(5):
            assert client.get(f"/echo/after/{i}").status_code == 200
    assert r_upstream.stats()["connections"] == connections, "the reload dropped the warm upstream connection"


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_reload_that_moves_the_listener_starts_a_new_generation(factory: OpsProxyFactory, r_upstream: Upstream) -> None:
    proxy = factory(ops_config(r_upstream, workers=2))
    old_port, old_pids = proxy.port, proxy.worker_pids()
    new_port = free_port()

    def move(cfg: dict[str, Any]) -> None:
        cfg["listeners"] = [{"name": "web", "listen": f"127.0.0.1:{new_port}"}]
        cfg["routes"].insert(0, respond_route("moved", "/moved", "moved\n"))

    proxy.rewrite(move)
    status = proxy.reload_signal(2)
    assert status["last_reload_error"] is None, status
    new_pids = [w["pid"] for w in status["workers"]]
    assert len(new_pids) == 2 and not set(new_pids) & set(old_pids), (old_pids, new_pids)

    for i in range(10):
        r = new_connection_get(f"http://127.0.0.1:{new_port}/echo/new/{i}")
        assert r.status_code == 200, r.text
    assert new_connection_get(f"http://127.0.0.1:{new_port}/moved").text == "moved\n"
    # the old generation drains and exits, and nobody listens on the old port any more
    assert wait_until(lambda: not any(pid_alive(p) for p in old_pids), 10), "old workers still run"
    assert wait_until(lambda: _refused(old_port), 5), f"port {old_port} still accepts connections"
    listeners = proxy.admin("GET", "/api/listeners").json()
    assert [lst["listen"] for lst in listeners] == [f"127.0.0.1:{new_port}"]
    assert proxy.alive()


@pytest.mark.skipif(not SHARDING, reason="listener shards need Linux's SO_REUSEPORT")
def test_reload_that_changes_the_shards_keeps_the_address(factory: OpsProxyFactory, r_upstream: Upstream) -> None:
    proxy = factory(ops_config(r_upstream, workers=1))
    assert listening_on(proxy.port) == 8
    for generation, shards in ((2, 12), (3, 3)):

        def resize(cfg: dict[str, Any], shards: int = shards) -> None:
            cfg["listeners"] = [{"name": "web", "listen": f"127.0.0.1:{proxy.port}", "shards": shards}]

        proxy.rewrite(resize)
        status = proxy.reload_signal(generation)
        assert status["last_reload_error"] is None, status
        # the sockets a smaller group leaves out are closed once the new workers serve
        assert wait_until(lambda shards=shards: listening_on(proxy.port) == shards, 10), listening_on(proxy.port)
        assert proxy.admin("GET", "/api/listeners").json()[0]["sockets"] == shards
        for i in range(30):
            r = new_connection_get(f"{proxy.url}/echo/shards/{generation}/{i}")
            assert r.status_code == 200, r.text
    assert proxy.alive()


@pytest.mark.skipif(not SHARDING, reason="listener shards need Linux's SO_REUSEPORT")
def test_a_listener_bound_alone_is_not_grown_by_a_reload(factory: OpsProxyFactory, r_upstream: Upstream) -> None:
    proxy = factory(ops_config(r_upstream, workers=1, listeners=[{"shards": 1}]))
    assert listening_on(proxy.port) == 1

    def shards(n: int) -> Callable[[dict[str, Any]], None]:
        def change(c: dict[str, Any]) -> None:
            c["listeners"] = [{"name": "web", "listen": f"127.0.0.1:{proxy.port}", "shards": n}]

        return change

    proxy.rewrite(shards(4))
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.status()["last_reload_error"] is not None, 10), proxy.status()
    error = proxy.status()["last_reload_error"]
    assert "bound with one, alone (restart to change it)" in error, error
    assert proxy.status()["generation"] == 1 and listening_on(proxy.port) == 1
    assert new_connection_get(f"{proxy.url}/echo/still").status_code == 200


def test_broken_file_is_refused_and_the_old_config_serves(shared: OpsProxy) -> None:
    proxy = shared
    before = proxy.status()
    gen, reloads, failures = before["generation"], before["reloads"], before["reload_failures"]
    assert before["last_reload_error"] is None
    failed_events = sum(1 for e in proxy.events() if e.get("event") == "reload_failed")
    assert new_connection_get(f"{proxy.url}/version").text == "v1\n"
    good_text = proxy.config_path.read_text()
    # line 2 gets an unknown key; everything else is the running config with a changed answer
    broken = json.loads(good_text)
    [v1] = [route for route in broken["routes"] if route["name"] == "v1"]
    v1["filters"][0]["body"] = "v2\n"
    text = json.dumps(broken, indent=2)
    assert text.startswith("{\n")
    proxy.write_text('{\n  "bogus_key": 1,\n' + text[2:])
    path = str(proxy.config_path)
    expected = re.compile(rf"^{re.escape(path)}:2: bogus_key: \S.*$")

    r = proxy.reload_api()
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["reloaded"] is False and doc["generation"] == gen, doc
    assert expected.match(doc["error"]), doc["error"]

    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.status()["reload_failures"] == failures + 2, 5), proxy.status()
    status = proxy.status()
    assert status["generation"] == gen and status["reloads"] == reloads, status
    assert expected.match(status["last_reload_error"]), status["last_reload_error"]
    assert all(w["generation"] == gen for w in status["workers"]), status
    failed = [e for e in proxy.events() if e.get("event") == "reload_failed"][failed_events:]
    assert len(failed) == 2 and all(expected.match(e["error"]) for e in failed), failed

    for _ in range(6):
        r = new_connection_get(f"{proxy.url}/version")
        assert r.status_code == 200 and r.text == "v1\n", r.text
        assert new_connection_get(f"{proxy.url}/echo/still").status_code == 200

    metrics = proxy.metrics()
    assert metrics["portcullis_reload_failures_total"][()] == failures + 2
    assert metrics["portcullis_reloads_total"][()] == reloads
    assert metrics["portcullis_config_generation"][()] == gen

    # fixed: the next reload applies it and clears the error
    proxy.write_text(text)
    r = proxy.reload_api()
    assert r.status_code == 200 and r.json()["generation"] == gen + 1, r.text
    assert proxy.status()["last_reload_error"] is None
    for _ in range(6):
        assert new_connection_get(f"{proxy.url}/version").text == "v2\n"


def test_keepalive_connections_of_the_old_generation(shared: OpsProxy) -> None:
    """After a reload an old keep-alive connection gets one more answer, marked `Connection: close`;
    one left idle is closed by the proxy soon after."""
    proxy = shared
    host = b"Host: 127.0.0.1\r\n"
    with RawConnection(proxy.port) as busy, RawConnection(proxy.port) as idle:
        for conn in (busy, idle):
            conn.send(b"GET /echo/before HTTP/1.1\r\n" + host + b"\r\n")
            resp = conn.read_response()
            assert resp.status == 200 and resp.header("Connection") is None, resp
        proxy.rewrite(_add_route("next-gen", "new\n"))
        _reload(proxy)
        busy.send(b"GET /echo/after HTTP/1.1\r\n" + host + b"\r\n")
        resp = busy.read_response()
        assert resp.status == 200, resp
        assert resp.header("Connection") == "close", resp
        assert busy.wait_closed(3) == b""
        assert idle.wait_closed(4) == b"", "an idle connection of the old generation stays open"
    r = new_connection_get(f"{proxy.url}/next-gen")
    assert r.status_code == 200 and r.text == "new\n"


def test_a_response_spanning_the_reload_then_its_idle_connection_closes(shared: OpsProxy) -> None:
    """The head went out before the reload (no `Connection: close` in it), so the proxy may not close
    right after the body; but the connection must not linger idle on the old generation either."""
    proxy = shared
    with RawConnection(proxy.port, timeout=10) as conn:
        conn.send(b"GET /slow-body/1.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert wait_until(lambda: b"\r\n\r\n" in conn.buf or not conn.is_open(0.05), 5)
        proxy.rewrite(_add_route("span", "span\n"))
        _reload(proxy)
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"0123456789abcdefghij", resp
        assert resp.header("Connection") is None, "the head was sent before the reload"
        idle_since = time.monotonic()
        assert conn.wait_closed(5) == b"", "an idle connection of the old generation stays open"
        took = time.monotonic() - idle_since
        assert took < 2.5, f"closed only {took:.1f}s after it went idle"
