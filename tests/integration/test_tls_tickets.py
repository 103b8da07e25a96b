"""Session tickets shared by the workers: a ticket from one worker resumes on every worker, after a
worker is replaced and across a reload; rotation keeps the previous key for one interval only."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from harness import Upstream, free_port, wait_until
from tls_support import ListenerProxy, Pki

pytestmark = pytest.mark.integration


class Visit(NamedTuple):
    reused: bool
    worker: str
    """The request id's per-process prefix: which worker answered."""
    session: ssl.SSLSession | None


def _visit(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Visit:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="a.test", session=session) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while piece := sock.recv(65536):  # reading the answer also reads the TLS 1.3 tickets
            data += piece
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        rid = next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.startswith("x-request-id:"))
        return Visit(sock.session_reused, rid[:12], sock.session)


def _visits(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession, rounds: int = 6, each: int = 40) -> list[Visit]:
    """New connections offering `session`, in rounds of `each` (4 at a time), until both workers answered."""
    seen: list[Visit] = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(rounds):
            seen += pool.map(lambda _: _visit(port, ctx, session), range(each))
            if len({v.worker for v in seen}) >= 2:
                break
    return seen


def _admin(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tickets-pki"))


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory, pki: Pki, upstream: Upstream) -> Iterator[Callable[..., Any]]:
    procs: list[ListenerProxy] = []
    workdir = tmp_path_factory.mktemp("tickets")
    server = pki.server_cert("a.test")

    def make(tickets: dict[str, Any] | None, **extra: Any) -> tuple[ListenerProxy, int]:
        admin = free_port()
        config = {
            "workers": 2, "admin": {"listen": f"127.0.0.1:{admin}"},
            "upstreams": {"main": {"peers": [{"url": upstream.url}]}},
            "routes": [{"name": "all", "upstream": "main"}], **extra,
        }  # fmt: skip
        tls = {"certificates": [server], "session_tickets": tickets}
        proxy = ListenerProxy(config, [{"name": "secure", "tls": tls}], workdir, f"t{len(procs)}")
        procs.append(proxy)
        return proxy, admin

    yield make
    for proxy in procs:
        proxy.stop()


@pytest.fixture(scope="module")
def shared(start: Callable[..., tuple[ListenerProxy, int]]) -> tuple[ListenerProxy, int]:
    return start({"rotate": "12h"})


def test_a_ticket_resumes_on_every_worker(shared: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, _ = shared
    ctx = pki.client_context()
    first = _visit(proxy.port("secure"), ctx)
    assert first.session is not None and first.session.has_ticket
    visits = _visits(proxy.port("secure"), ctx, first.session)
    assert len({v.worker for v in visits}) == 2, "one worker took every connection"
    assert all(v.reused for v in visits), [v.worker for v in visits if not v.reused]


def test_per_worker_tickets_without_shared_keys(start: Callable[..., tuple[ListenerProxy, int]], pki: Pki) -> None:
    """The contrast (session_tickets: null): only the worker that issued the ticket resumes it."""
    proxy, _ = start(None)
    ctx = pki.client_context()
    first = _visit(proxy.port("secure"), ctx)
    assert first.session is not None
    visits = _visits(proxy.port("secure"), ctx, first.session)
    assert len({v.worker for v in visits}) == 2, "one worker took every connection"
    assert all(v.reused == (v.worker == first.worker) for v in visits)


def test_a_replaced_worker_and_a_reload_get_the_current_keys(shared: tuple[ListenerProxy, int], pki: Pki) -> None:
    proxy, admin = shared
    ctx = pki.client_context()
    first = _visit(proxy.port("secure"), ctx)
    assert first.session is not None
    pids = [w["pid"] for w in _admin(admin, "/api/status")["workers"]]
    os.kill(pids[0], signal.SIGKILL)

    def replaced() -> bool:
        workers = _admin(admin, "/api/status")["workers"]
        fresh = pids[0] not in [w["pid"] for w in workers]
        return len(workers) == 2 and fresh and all(w["generation"] for w in workers)

    assert wait_until(replaced, 15.0, 0.1)
    visits = _visits(proxy.port("secure"), ctx, first.session)
    assert len({v.worker for v in visits}) == 2 and all(v.reused for v in visits)
    # a reload that adds a listener starts a new generation of workers; the ticket still resumes
    cfg = dict(proxy.cfg)
    cfg["listeners"] = [*cfg["listeners"], {"name": "plain", "listen": f"127.0.0.1:{free_port()}"}]
    proxy.config_path.write_text(json.dumps(cfg))
    os.kill(proxy.proc.pid, signal.SIGHUP)

    def reloaded() -> bool:
        workers = _admin(admin, "/api/status")["workers"]
        return len(workers) == 2 and all(w["generation"] == 2 for w in workers)

    assert wait_until(reloaded, 15.0, 0.1)
    time.sleep(0.5)  # the old generation stops accepting once told to drain
    visits = _visits(proxy.port("secure"), ctx, first.session)
    assert len({v.worker for v in visits}) == 2 and all(v.reused for v in visits)


def test_rotation_grace_is_one_interval(start: Callable[..., tuple[ListenerProxy, int]], pki: Pki) -> None:
    """rotate: 3s. A ticket taken just after rotation n still resumes after rotation n+1 (its key is
    the previous one), and no longer after rotation n+2."""
    proxy, admin = start({"rotate": "3s"})
    port, ctx = proxy.port("secure"), pki.client_context()

    def rotations() -> int:
        return int(_admin(admin, "/api/listeners")[0]["session_tickets"]["rotations"])

    def next_rotation(after: int) -> int:
        assert wait_until(lambda: rotations() > after, 10.0, 0.05), "no rotation"
        time.sleep(0.3)  # the workers are told right after the master rotates
        return rotations()

    start_at = next_rotation(rotations())
    ticket = _visit(port, ctx)
    assert ticket.session is not None
    assert next_rotation(start_at) == start_at + 1
    grace = _visits(port, ctx, ticket.session, rounds=1, each=20)
    assert all(v.reused for v in grace), "the previous key must still resume"
    assert next_rotation(start_at + 1) == start_at + 2
    expired = _visits(port, ctx, ticket.session, rounds=1, each=20)
    assert not any(v.reused for v in expired), "a key two rotations old must not resume"


def test_admin_shows_rotation_state(shared: tuple[ListenerProxy, int]) -> None:
    _, admin = shared
    state = _admin(admin, "/api/listeners")[0]["session_tickets"]
    assert state == {"keys": 1, "rotations": 0, "rotated_at": state["rotated_at"]}  # no secret in sight
    assert state["rotated_at"].endswith("Z")


def test_every_worker_serves_shared_tickets_without_warnings(shared: tuple[ListenerProxy, int]) -> None:
    proxy, _ = shared
    assert "session tickets stay per worker" not in Path(proxy.log_path).read_text()
