"""The HTTP/1.1 keep-alive pool: which idle connection is reused, and how a pool shrinks again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from portcullis.engine.watchdog import Watchdog
from portcullis.upstream.connection import UpstreamConnection
from portcullis.upstream.pool import TRIM_INTERVAL, Pool


class Transport:
    """The part of a socket transport that an idle pooled connection uses."""

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


Maker = Callable[[], UpstreamConnection]


@pytest.fixture
def make() -> Iterator[Maker]:
    """Connections as a pool gets them: made, with a transport, not yet parked."""
    loop = asyncio.new_event_loop()
    watchdog = Watchdog(loop)
    pool = Pool()

    def make_one() -> UpstreamConnection:
        conn = UpstreamConnection(pool, watchdog)
        conn.connection_made(Transport())  # type: ignore[arg-type]
        return conn

    yield make_one
    loop.close()


def shut(conn: UpstreamConnection) -> bool:
    """The pool closed it."""
    return bool(conn.transport.is_closing())


def test_the_connection_that_rested_longest_is_reused_first(make: Maker) -> None:
    pool = Pool(idle_timeout=60.0)
    a, b, c = make(), make(), make()
    for conn in (a, b, c):
        pool.release(conn, 1.0)
    assert a.deadline == 61.0
    assert pool.acquire() is a
    pool.release(a, 1.1)
    assert [pool.acquire() for _ in range(3)] == [b, c, a]
    assert pool.acquire() is None


def test_a_request_that_cannot_be_sent_again_gets_the_connection_used_last(make: Maker) -> None:
    pool = Pool()
    a, b, c = make(), make(), make()
    for conn in (a, b, c):
        pool.release(conn, 1.0)
    assert pool.acquire(recent=True) is c
    assert pool.acquire() is a


def test_a_closed_idle_connection_is_skipped_and_dropped(make: Maker) -> None:
    pool = Pool()
    a, b = make(), make()
    pool.release(a, 1.0)
    pool.release(b, 1.0)
    a.closed = True
    assert pool.acquire() is b
    assert pool.idle_count == 0


def test_a_full_pool_closes_what_comes_back(make: Maker) -> None:
    pool = Pool(max_idle=1)
    a, b = make(), make()
    pool.release(a, 1.0)
    pool.release(b, 1.0)
    assert pool.idle_count == 1 and shut(b) and not shut(a)


def test_connections_a_burst_left_are_closed_when_the_load_no_longer_needs_them(make: Maker) -> None:
    pool = Pool()
    conns = [make() for _ in range(8)]
    now = 100.0
    for conn in conns:  # a burst: eight at once
        pool.release(conn, now)
    assert pool.idle_count == 8
    # then one request at a time: never more than one of the eight is in use
    for round_ in range(1, 4):
        now += TRIM_INTERVAL / 2
        for _ in range(2):
            conn = pool.acquire()
            pool.release(conn, now)
        now += TRIM_INTERVAL / 2
        conn = pool.acquire()
        pool.release(conn, now)  # an interval has passed: the surplus is halved
        open_ = sum(not shut(c) for c in conns)
        assert pool.idle_count == open_
        if round_ == 1:
            assert open_ < 8
    assert pool.idle_count <= 3
    assert all(shut(c) for c in conns if c not in pool.idle)


def test_a_pool_that_the_load_uses_fully_keeps_its_connections(make: Maker) -> None:
    pool = Pool()
    conns = [make() for _ in range(4)]
    now = 100.0
    for conn in conns:
        pool.release(conn, now)
    for _ in range(4):
        now += TRIM_INTERVAL / 2
        taken = [pool.acquire() for _ in range(4)]  # all four busy at once each time
        for conn in taken:
            pool.release(conn, now)
    assert pool.idle_count == 4 and not any(shut(c) for c in conns)
