"""The HTTP/1.1 keep-alive pool: which idle connection is reused, and how a pool shrinks again."""

from __future__ import annotations

from typing import Any, cast

from portcullis.upstream.connection import UpstreamConnection
from portcullis.upstream.pool import TRIM_INTERVAL, Pool


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class Conn:
    """The part of an UpstreamConnection that the pool uses."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Transport | None = Transport()
        self.closed = False
        self.deadline = 0.0

    def park(self, deadline: float) -> None:
        self.deadline = deadline

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.closing = True


def release(pool: Pool, conn: Conn, now: float) -> None:
    pool.release(cast(UpstreamConnection, conn), now)


def acquire(pool: Pool) -> Any:
    return pool.acquire()


def test_the_connection_that_rested_longest_is_reused_first() -> None:
    pool = Pool(idle_timeout=60.0)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b, c):
        release(pool, conn, 1.0)
    assert a.deadline == 61.0
    assert acquire(pool) is a
    release(pool, a, 1.1)
    assert [acquire(pool).name for _ in range(3)] == ["b", "c", "a"]
    assert acquire(pool) is None


def test_a_request_that_cannot_be_sent_again_gets_the_connection_used_last() -> None:
    pool = Pool()
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b, c):
        release(pool, conn, 1.0)
    assert pool.acquire(recent=True) is c
    assert acquire(pool) is a


def test_a_closed_idle_connection_is_skipped_and_dropped() -> None:
    pool = Pool()
    a, b = Conn("a"), Conn("b")
    release(pool, a, 1.0)
    release(pool, b, 1.0)
    a.closed = True
    assert acquire(pool) is b
    assert pool.idle_count == 0


def test_a_full_pool_closes_what_comes_back() -> None:
    pool = Pool(max_idle=1)
    a, b = Conn("a"), Conn("b")
    release(pool, a, 1.0)
    release(pool, b, 1.0)
    assert pool.idle_count == 1 and b.closed and not a.closed


def test_connections_a_burst_left_are_closed_when_the_load_no_longer_needs_them() -> None:
    pool = Pool()
    conns = [Conn(str(i)) for i in range(8)]
    now = 100.0
    for conn in conns:  # a burst: eight at once
        release(pool, conn, now)
    assert pool.idle_count == 8
    # then one request at a time: never more than one of the eight is in use
    for round_ in range(1, 4):
        now += TRIM_INTERVAL / 2
        for _ in range(2):
            conn = acquire(pool)
            release(pool, conn, now)
        now += TRIM_INTERVAL / 2
        conn = acquire(pool)
        release(pool, conn, now)  # an interval has passed: the surplus is halved
        open_ = sum(not c.closed for c in conns)
        assert pool.idle_count == open_
        if round_ == 1:
            assert open_ < 8
    assert pool.idle_count <= 3
    assert all(c.closed for c in conns if c not in pool.idle)


def test_a_pool_that_the_load_uses_fully_keeps_its_connections() -> None:
    pool = Pool()
    conns = [Conn(str(i)) for i in range(4)]
    now = 100.0
    for conn in conns:
        release(pool, conn, now)
    for _ in range(4):
        now += TRIM_INTERVAL / 2
        taken = [acquire(pool) for _ in range(4)]  # all four busy at once each time
        for conn in taken:
            release(pool, conn, now)
    assert pool.idle_count == 4 and not any(c.closed for c in conns)
