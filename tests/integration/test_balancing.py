"""Load balancing and resilience with several real upstream servers and the real proxy (issue 5).

The test upstream's /work endpoint answers {"server": NAME} after a per-server delay and with a
per-server status, both set through its /control endpoint; /healthz answers 503 while /control
says the server is unhealthy (neither is counted in its /stats). Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from harness import ROOT, START_TIMEOUT, UPSTREAM_SCRIPT, Upstream, free_port, wait_until
from ops_helpers import OpsProxy, OpsProxyFactory, ops_proxies

pytestmark = pytest.mark.integration


# =========================================================================== helpers

class FixedPortUpstream(Upstream):
    """The test upstream started on a given port: a killed peer coming back where it was."""

    def __init__(self, name: str, log_dir: Path, port: int) -> None:
        self.name = name
        self.log_path = log_dir / f"upstream-{name}-restarted.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port), "--name", name],
            stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        try:
            info = json.loads(self._read_line(START_TIMEOUT))
        except Exception:
            self.stop()
            raise
        self.port = info["port"]
        self.ws_port = info["ws_port"]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def restart(workdir: Path) -> Iterator[Callable[[Upstream], Upstream]]:
    started: list[Upstream] = []

    def again(old: Upstream) -> Upstream:
        up = FixedPortUpstream(old.name, workdir, old.port)
        started.append(up)
        return up

    yield again
    for up in started:
        up.stop()


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "balance") as f:
        yield f


def control(up: Upstream, **settings: Any) -> dict[str, Any]:
    """Set how the upstream's /work and /healthz behave (delay, status, healthy, retry_after)."""
    doc: dict[str, Any] = up._get("/control?" + urlencode(settings))
    return doc


@pytest.fixture(scope="module")
def trio(make_upstream: Callable[[str], Upstream]) -> tuple[Upstream, Upstream, Upstream]:
    return make_upstream("bal-a"), make_upstream("bal-b"), make_upstream("bal-c")


@pytest.fixture
def peers(trio: tuple[Upstream, Upstream, Upstream]) -> Iterator[tuple[Upstream, Upstream, Upstream]]:
    """Three live upstreams, reset to their defaults before and after each test."""
    for up in trio:
        control(up, delay=0, status=200, healthy=1, retry_after="")
    yield trio
    for up in trio:
        if up.proc.poll() is None:
            control(up, delay=0, status=200, healthy=1, retry_after="")


def balanced(*peers: Upstream | str, workers: int = 1, **upstream: Any) -> dict[str, Any]:
    """An upstream `main` over `peers` (an Upstream, a URL, or a dict peer spec), one route to it."""
    specs = []
    for p in peers:
        if isinstance(p, Upstream):
            specs.append({"url": p.url})
        elif isinstance(p, str):
            specs.append({"url": p})
        else:
            specs.append(p)
    return {
        "workers": workers,
        "upstreams": {"main": {"peers": specs, **upstream}},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "main"}],
    }


class Client:
    """One keep-alive connection to the proxy (http.client: cheap, no pool); reconnects after a close."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.close()
            raise
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.close()
        return resp.status, headers_out, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def served_by(body: bytes) -> str:
    server: str = json.loads(body)["server"]
    return server


class Load:
    """`threads` keep-alive clients sending GET /work back to back until stopped; every outcome recorded."""

    def __init__(self, port: int, threads: int = 4, path: str = "/work") -> None:
        self.port = port
        self.path = path
        self.servers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = Client(self.port)
        while not self._stop.is_set():
            try:
                status, _, body = client.request("GET", self.path)
                outcome = "" if status == 200 else f"{status} {body[:200]!r}"
                server = served_by(body) if status == 200 else ""
            except Exception as exc:  # every failure counts, whatever its kind
                outcome, server = f"{type(exc).__name__}: {exc}", ""
            with self._lock:
                if outcome:
                    self.failures.append(f"{time.monotonic():.3f} {outcome}")
                else:
                    self.servers[server] += 1
        client.close()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.servers.values())

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        assert not any(t.is_alive() for t in self._threads), "a client thread hangs"


def peer_states(proxy: OpsProxy) -> dict[str, dict[str, Any]]:
    r = proxy.admin("GET", "/api/upstreams")
    assert r.status_code == 200, r.text
    return {p["url"]: p for p in r.json()["main"]["peers"]}


def wait_state(proxy: OpsProxy, url: str, check: Callable[[dict[str, Any]], bool], timeout: float) -> float:
    """Seconds until the peer's /api/upstreams entry satisfies `check`; AssertionError after `timeout`."""
    start = time.monotonic()
    last: dict[str, Any] = {}

    def look() -> bool:
        last.update(peer_states(proxy)[url])
        return check(last)

    assert wait_until(look, timeout, 0.05), f"peer {url} not as expected after {timeout}s: {last}"
    return time.monotonic() - start


def is_down(p: dict[str, Any]) -> bool:
    return p["state"] == "down" and p["active_check"] is not None and p["active_check"]["healthy"] is False


def is_up(p: dict[str, Any]) -> bool:
    return p["state"] == "up" and p["active_check"] is not None and p["active_check"]["healthy"] is True


def counter_sum(proxy: OpsProxy, name: str, **labels: str) -> float:
    samples = proxy.metrics().get(name, {})
    return sum(v for k, v in samples.items() if all(dict(k).get(n) == val for n, val in labels.items()))


# =========================================================================== a peer dies under load

HEALTH = {"path": "/healthz", "interval": "0.5s", "timeout": "0.5s", "unhealthy_threshold": 2, "healthy_threshold": 2}
# the slowest a check can mark a peer down: `unhealthy_threshold` probes `interval` apart, each within `timeout`
DOWN_WITHIN = 2 * 0.5 + 0.5 + 0.5  # plus 0.5 s for the message to the workers and the admin poll
UP_WITHIN = 2 * 0.5 + 0.5 + 1.0  # plus the breaker's probe under load


def test_killing_a_peer_under_load_loses_no_request(
    factory: OpsProxyFactory, make_upstream: Callable[[str], Upstream], restart: Callable[[Upstream], Upstream]
) -> None:
    ups = [make_upstream("kill-a"), make_upstream("kill-b"), make_upstream("kill-c")]
    proxy = factory(balanced(*ups, workers=2, health=HEALTH, breaker={"failures": 3, "open_for": "1s"},
                             retries={"attempts": 2}, timeouts={"connect": "1s"}))  # fmt: skip
    victim = ups[1]
    assert wait_until(lambda: all(is_up(p) for p in peer_states(proxy).values()), 5)
    with Load(proxy.port, threads=6) as load:
        assert wait_until(lambda: load.total > 200, 5), load.failures[:5]
        assert load.servers[victim.name] > 0
        time.sleep(0.5)
        victim.stop()
        killed_at = time.monotonic()
        before_kill = load.servers[victim.name]
        down_after = wait_state(proxy, victim.url, is_down, 5.0)
        down_state = peer_states(proxy)[victim.url]
        assert down_state["reason"].startswith("check failed"), down_state
        time.sleep(max(0.0, 1.5 - (time.monotonic() - killed_at)))  # load keeps running on the survivors
        survivors_before = sum(load.servers[u.name] for u in ups if u is not victim)
        time.sleep(0.5)
        assert sum(load.servers[u.name] for u in ups if u is not victim) > survivors_before
        back = restart(victim)  # same name, same port
        up_after = wait_state(proxy, victim.url, is_up, 5.0)
        assert wait_until(lambda: load.servers[victim.name] > before_kill, 3), "the peer got nothing once back"
        time.sleep(0.3)
    assert load.failures == [], f"{len(load.failures)} failed GETs, first: {load.failures[:5]}"
    assert load.total > 500
    print(f"{load.total} GETs, none failed; down {down_after:.2f}s after the kill, up {up_after:.2f}s after restart")
    assert down_after <= DOWN_WITHIN, f"marked down after {down_after:.2f}s"
    assert up_after <= UP_WITHIN, f"back up after {up_after:.2f}s"
    assert back.stats()["requests"] > 0
    m = proxy.metrics()
    retries = sum(m.get("portcullis_upstream_retries_total", {}).values())
    assert retries >= 1, "the dead peer's requests should have been retried"


# =========================================================================== a slow peer gets fewer requests

@pytest.mark.parametrize(("balance", "most", "least"), [
    ("p2c_ewma", 0.10, 0.0),
    ("least_conn", 0.15, 0.0),
    ("round_robin", 0.37, 0.30),  # the control: without feedback the slow peer gets its third
])  # fmt: skip
def test_a_slow_peer_gets_fewer_requests(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream], balance: str, most: float, least: float
) -> None:
    slow = peers[2]
    control(slow, delay=0.1)
    proxy = factory(balanced(*peers, balance=balance))
    with Load(proxy.port, threads=6) as load:
        wait_until(lambda: load.total >= 1500, 3.0)
    assert load.failures == []
    share = load.servers[slow.name] / load.total
    print(f"{balance}: the slow peer got {share:.1%} of {load.total} requests")
    assert least <= share <= most, (balance, share, dict(load.servers))
    proxy.stop()


# =========================================================================== sticky sessions

def test_sticky_cookie_keeps_a_client_on_its_peer(
    factory: OpsProxyFactory, make_upstream: Callable[[str], Upstream]
) -> None:
    ups = [make_upstream("sticky-a"), make_upstream("sticky-b"), make_upstream("sticky-c")]
    proxy = factory(balanced(*ups, workers=2, sticky={"cookie": "pc_peer"}, retries={"attempts": 2}))
    tokens: dict[str, str] = {}
    for _ in range(9):  # new connections, over both workers
        status, headers, body = Client(proxy.port).request("GET", "/work", headers={"Connection": "close"})
        assert status == 200
        cookie = headers["set-cookie"]
        assert cookie.startswith("pc_peer=") and "HttpOnly" in cookie and "Path=/" in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        assert tokens.setdefault(served_by(body), token) == token
    assert sorted(tokens) == sorted(u.name for u in ups)
    for server, token in tokens.items():
        for _ in range(6):
            status, headers, body = Client(proxy.port).request(
                "GET", "/work", headers={"Connection": "close", "Cookie": f"x=1; pc_peer={token}"}
            )
            assert status == 200 and served_by(body) == server
            assert "set-cookie" not in headers  # the right cookie is not sent again
    # the pinned peer dies: the client is served by another and re-pinned there
    victim = ups[0]
    victim.stop()
    status, headers, body = Client(proxy.port).request(
        "GET", "/work", headers={"Cookie": f"pc_peer={tokens[victim.name]}"}
    )
    assert status == 200 and served_by(body) != victim.name
    new_token = headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert new_token == tokens[served_by(body)]


# =========================================================================== what is retried, and what is not

def _delta(ups: list[Upstream], before: list[dict[str, int]]) -> list[int]:
    return [u.stats()["requests"] - b["requests"] for u, b in zip(ups, before, strict=True)]


def test_post_is_not_retried_after_its_body_was_sent_but_get_is(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    ups = list(peers)
    proxy = factory(balanced(*ups, retries={"attempts": 2}))
    client = Client(proxy.port)
    body = b"p" * 1000
    # /reset reads the whole request, then resets the connection without answering
    before = [u.stats() for u in ups]
    status, _, _ = client.request("POST", "/reset", body=body)
    assert status == 502
    assert sum(_delta(ups, before)) == 1, "a POST whose body reached the peer was sent again"
    entries = [e for u, b in zip(ups, before, strict=True) for e in u.log_since(b)]
    assert len(entries) == 1 and entries[0]["complete"] and entries[0]["body_length"] == 1000
    # the same failure on a GET is retried, each time on another peer
    before = [u.stats() for u in ups]
    status, _, _ = client.request("GET", "/reset")
    assert status == 502
    assert _delta(ups, before) == [1, 1, 1]
    # a PUT (idempotent) with a small body is replayed too
    before = [u.stats() for u in ups]
    status, _, _ = client.request("PUT", "/reset", body=body)
    assert status == 502
    assert _delta(ups, before) == [1, 1, 1]
    for u in ups:
        assert all(e["body_length"] == 1000 for e in u.log_since({"requests": before[ups.index(u)]["requests"]}))


def test_connect_failure_is_retried_on_another_peer_even_for_post(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    live = peers[0]
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = factory(balanced(dead, live, retries={"attempts": 1}, timeouts={"connect": "1s"}))
    client = Client(proxy.port)
    before = live.stats()
    for i in range(6):  # round robin: every other first try goes to the dead peer
        status, _, body = client.request("POST", f"/work/{i}", body=b"b" * (100 + i))
        assert status == 200, body
        assert served_by(body) == live.name and json.loads(body)["body_length"] == 100 + i
    assert live.stats()["requests"] - before["requests"] == 6
    assert counter_sum(proxy, "portcullis_upstream_retries_total", reason="connect_failed") >= 3


def test_retry_budget_caps_retries_when_every_peer_fails(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    ups = list(peers)
    for up in ups:
        control(up, status=503)
    budget, capacity, n = 0.1, 10, 100
    proxy = factory(balanced(*ups, retries={"attempts": 2, "on_statuses": [503], "budget": budget}))
    client = Client(proxy.port)
    before = [u.stats() for u in ups]
    statuses = Counter(client.request("GET", f"/work/{i}")[0] for i in range(n))
    assert statuses == {503: n}  # the last peer's own answer
    attempts = counter_sum(proxy, "portcullis_upstream_attempts_total", upstream="main")
    received = sum(_delta(ups, before))
    assert attempts == received
    # without a budget every request would be tried 3 times (300 attempts)
    assert n + budget * n + capacity - 1 <= attempts <= n + budget * n + capacity, attempts
    assert counter_sum(proxy, "portcullis_upstream_retries_total", reason="upstream_status") == attempts - n


def test_a_503_is_retried_on_another_peer_and_retry_after_is_honoured(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    ups = list(peers)
    bad = ups[0]
    control(bad, status=503)
    proxy = factory(balanced(*ups, retries={"attempts": 1, "on_statuses": [503]}))
    client = Client(proxy.port)
    before = bad.stats()
    seen = Counter()
    for i in range(30):
        status, _, body = client.request("GET", f"/work/{i}")
        assert status == 200
        seen[served_by(body)] += 1
    assert seen[bad.name] == 0 and seen[ups[1].name] > 0 and seen[ups[2].name] > 0
    assert bad.stats()["requests"] - before["requests"] >= 5  # its 503s were there, and retried
    # a POST is not retried on a status: the client gets the peer's 503
    before = bad.stats()
    posts = Counter(client.request("POST", "/work", body=b"x")[0] for _ in range(6))
    assert posts[503] == bad.stats()["requests"] - before["requests"] >= 1
    # a 503 with Retry-After keeps the peer out for that long: it is asked once, then left alone
    control(bad, retry_after=30)
    before = bad.stats()
    for i in range(30):
        status, _, body = client.request("GET", f"/work/ra{i}")
        assert status == 200 and served_by(body) != bad.name
    assert bad.stats()["requests"] - before["requests"] == 1
    states = peer_states(proxy)
    assert states[bad.url]["state"] == "retry-after"


# =========================================================================== backups, and no peer at all

def test_backup_peer_only_when_the_primaries_are_down_then_503(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    a, b, backup = peers
    fast_health = {"path": "/healthz", "interval": "0.2s", "timeout": "0.5s",
                   "unhealthy_threshold": 1, "healthy_threshold": 1}  # fmt: skip
    proxy = factory(balanced(a, b, {"url": backup.url, "backup": True}, health=fast_health))
    client = Client(proxy.port)

    def servers(n: int = 20) -> Counter[str]:
        out: Counter[str] = Counter()
        for i in range(n):
            status, _, body = client.request("GET", f"/work/{i}")
            assert status == 200, body
            out[served_by(body)] += 1
        return out

    assert wait_until(lambda: all(is_up(p) for p in peer_states(proxy).values()), 5)
    assert servers() == {a.name: 10, b.name: 10}
    control(a, healthy=0)
    wait_state(proxy, a.url, is_down, 3)
    assert servers() == {b.name: 20}  # one primary left: still no backup
    control(b, healthy=0)
    wait_state(proxy, b.url, is_down, 3)
    assert servers() == {backup.name: 20}
    assert peer_states(proxy)[backup.url]["backup"] is True
    control(a, healthy=1)
    wait_state(proxy, a.url, is_up, 3)
    assert servers() == {a.name: 20}
    # every peer down: 503 at once, with a body that says why
    control(a, healthy=0)
    control(backup, healthy=0)
    wait_state(proxy, a.url, is_down, 3)
    wait_state(proxy, backup.url, is_down, 3)
    five_xx = counter_sum(proxy, "portcullis_requests_total", route="all", status_class="5xx")
    status, headers, body = client.request("GET", "/work/none")
    assert status == 503
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == 503 and doc["error"] == "Service Unavailable"
    assert doc["message"] == "no available peer in upstream 'main'" and doc["request_id"]
    status, headers, body = client.request("GET", "/work/none", headers={"Accept": "text/html"})
    assert status == 503 and b"no available peer in upstream &#x27;main&#x27;" in body
    assert counter_sum(proxy, "portcullis_requests_total", route="all", status_class="5xx") == five_xx + 2


# =========================================================================== circuit breaker end to end

def test_breaker_opens_and_an_abandoned_probe_does_not_keep_the_peer_out(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    a, b, _ = peers
    proxy = factory(balanced(a, b, breaker={"failures": 2, "open_for": "0.5s"}, retries={"attempts": 0}))
    client = Client(proxy.port)
    control(a, status=500)
    for i in range(4):  # round robin: a answers 500 twice, which opens its breaker
        client.request("GET", f"/work/{i}")
    assert peer_states(proxy)[a.url]["state"] == "breaker open"
    assert peer_states(proxy)[a.url]["reason"] == "circuit breaker open"
    before = a.stats()["requests"]
    statuses = [client.request("GET", f"/work/open{i}")[0] for i in range(10)]
    assert statuses == [200] * 10 and a.stats()["requests"] == before  # open: a gets nothing
    # a is well again but slow; after open_for its one probe goes out, and that client gives up
    control(a, status=200, delay=1.0)
    time.sleep(0.6)
    abandoned = False
    for i in range(6):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3) as s:
            s.sendall(f"GET /work/probe{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                s.recv(65536)  # b answers at once
            except TimeoutError:
                # the probe to the slow peer: give up with a reset, so the proxy drops the try at once
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                abandoned = True
                break
    assert abandoned, "the probe never went to the slow peer"
    time.sleep(0.1)
    assert peer_states(proxy)[a.url]["state"] == "breaker half_open"
    control(a, delay=0)
    # the lost probe is presumed lost after open_for: another probe closes the breaker
    seen: Counter[str] = Counter()
    end = time.monotonic() + 3.0
    while time.monotonic() < end and seen[a.name] < 3:
        status, _, body = client.request("GET", "/work/after")
        assert status == 200
        seen[served_by(body)] += 1
        time.sleep(0.02)
    assert seen[a.name] >= 3, f"the peer stays out after an abandoned probe: {dict(seen)}"
    assert wait_until(lambda: peer_states(proxy)[a.url]["state"] == "up", 2)


# =========================================================================== max_conns: a bounded queue, then 503

def test_max_conns_queues_for_queue_timeout_then_503(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    a = peers[0]
    control(a, delay=0.6)
    proxies = {  # one peer and no health policy: the group's fast path must still count max_conns
        "short": factory(balanced({"url": a.url, "max_conns": 1}, queue_timeout="0.2s")),
        "long": factory(balanced({"url": a.url, "max_conns": 1}, queue_timeout="2s")),
    }
    for name, proxy in proxies.items():
        results: dict[int, tuple[int, float, bytes]] = {}

        def one(i: int, port: int = proxy.port, out: dict[int, tuple[int, float, bytes]] = results) -> None:
            start = time.monotonic()
            status, _, body = Client(port).request("GET", f"/work/{i}")
            out[i] = (status, time.monotonic() - start, body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # the first is in flight when the second arrives
        for t in threads:
            t.join(10)
        statuses = sorted(s for s, _, _ in results.values())
        if name == "short":
            assert statuses == [200, 503], results
            status, waited, body = results[1]
            assert status == 503 and 0.15 < waited < 0.5, results
            assert json.loads(body)["message"] == "every peer of upstream 'main' is at max_conns"
        else:
            assert statuses == [200, 200], results
            assert results[1][1] > 0.9  # it waited for the first to finish, then took its 0.6 s


def test_retry_after_is_honoured_when_the_request_itself_is_not_retried(
    factory: OpsProxyFactory, peers: tuple[Upstream, Upstream, Upstream]
) -> None:
    bad, good = peers[0], peers[1]
    control(bad, status=503, retry_after=30)
    proxy = factory(balanced(bad, good, retries={"attempts": 1, "on_statuses": [503]}))
    client = Client(proxy.port)
    before = bad.stats()["requests"]
    statuses = Counter(client.request("POST", f"/work/{i}", body=b"x")[0] for i in range(6))
    assert bad.stats()["requests"] - before == 1, statuses
