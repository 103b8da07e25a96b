"""UpstreamGroup and Peer (portcullis/upstream/group.py): selection with eligibility, backups,
max_conns, tried peers, sticky cookies, hash keys, and what recorded outcomes do to a peer
(breaker, outlier ejection with its share cap, slow start), on a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from portcullis.config.schema import Upstream
from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Headers
from portcullis.upstream.group import Peer, UpstreamGroup
from portcullis.upstream.pool import Pool
from portcullis.upstream.sticky import add_sticky_cookie, sticky_token


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_group(clock: Clock | None = None, seed: int = 0, **upstream: Any) -> UpstreamGroup:
    """Like worker/build.py build_upstreams, from the schema's Upstream model."""
    upstream.setdefault("peers", [{"url": f"http://10.0.0.{i}:8080"} for i in range(1, 4)])
    config = Upstream.model_validate(upstream)
    peers = [Peer(p.url, p.weight, Pool(), p.backup, p.max_conns) for p in config.peers]
    group = UpstreamGroup("app", config, peers, clock=clock or Clock())
    group.selector.rng = random.Random(seed)
    if group.backup_selector is not None:
        group.backup_selector.rng = random.Random(seed + 1)
    return group


def ctx(headers: Headers | None = None, target: bytes = b"/", client_ip: str = "192.0.2.10") -> RequestContext:
    return RequestContext(
        method="GET", target=target, headers=headers or [(b"Host", b"example.com")], version="1.1",
        host="example.com", client_ip=client_ip, client_port=40000, scheme="http", listener="web", started=0.0,
    )  # fmt: skip


def select_many(group: UpstreamGroup, n: int, **kwargs: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        p = group.select(kwargs.get("c") or ctx(), kwargs.get("tried", ()))
        out[p.label if p is not None else "none"] += 1
    return out


# ============================================================================ building


def test_group_from_the_schema() -> None:
    group = make_group(
        peers=[{"url": "http://10.0.0.1:8080", "weight": 3}, {"url": "http://10.0.0.2"},
               {"url": "http://10.0.0.9:8080", "backup": True, "max_conns": 4}],
        balance="least_conn", breaker={"failures": 2}, outlier={}, retries={"attempts": 2, "budget": 0.1},
    )  # fmt: skip
    a, b, backup = group.peers
    assert (a.host, a.port, a.weight, a.label) == ("10.0.0.1", 8080, 3, "10.0.0.1:8080")
    assert (b.port, b.label) == (80, "10.0.0.2:80")
    assert backup.backup and backup.max_conns == 4
    assert group.primaries == (a, b) and group.backups == (backup,)
    assert all(p.breaker is not None and p.outlier is not None and p.group is group for p in group.peers)
    assert group.budget.ratio == 0.1 and not group.trivial


def test_single_peer_without_health_is_trivial() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80"}])
    assert group.trivial
    assert group.select(ctx()) is group.peers[0]


# ============================================================================ selection rules


def test_round_robin_through_the_group_is_weighted() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80", "weight": 3}, {"url": "http://10.0.0.2:80"}])
    assert select_many(group, 40) == {"10.0.0.1:80": 30, "10.0.0.2:80": 10}


def test_backups_only_when_no_primary_is_available() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80"},
                              {"url": "http://10.0.0.3:80", "backup": True}])  # fmt: skip
    a, b, backup = group.peers
    assert select_many(group, 100)["10.0.0.3:80"] == 0
    group.set_active_health(a, False, "down")
    assert select_many(group, 100) == {"10.0.0.2:80": 100}
    group.set_active_health(b, False, "down")
    assert select_many(group, 50) == {"10.0.0.3:80": 50}
    group.set_active_health(a, True, "up")
    assert select_many(group, 50) == {"10.0.0.1:80": 50}
    group.set_active_health(a, False, "down")
    group.set_active_health(backup, False, "down")
    assert group.select(ctx()) is None


def test_a_retry_avoids_tried_peers_when_others_exist() -> None:
    group = make_group(peers=[{"url": f"http://10.0.0.{i}:80"} for i in range(1, 5)])
    a, b, c, d = group.peers
    for _ in range(50):
        assert group.select(ctx(), (a,)) not in (a,)
        assert group.select(ctx(), (a, b, c)) is d
    # a tried primary is avoided even in favour of an untried backup
    group2 = make_group(peers=[{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80", "backup": True}])
    p, bk = group2.peers
    assert group2.select(ctx(), (p,)) is bk
    # with every peer tried, a retry still gets an available one rather than nothing
    assert group.select(ctx(), (a, b, c, d)) in (a, b, c, d)
    group.set_active_health(d, False, "down")
    for _ in range(20):
        assert group.select(ctx(), (a, b, c)) in (a, b, c)


def test_max_conns_is_respected_and_at_capacity_says_so() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80", "max_conns": 2},
                              {"url": "http://10.0.0.2:80", "max_conns": 1}])  # fmt: skip
    a, b = group.peers
    taken = []
    for _ in range(3):
        p = group.select(ctx())
        assert p is not None
        p.active += 1
        taken.append(p)
    assert (a.active, b.active) == (2, 1)
    assert group.select(ctx()) is None and group.at_capacity()
    b.active -= 1
    assert not group.at_capacity() and group.select(ctx()) is b


def test_max_conns_of_a_single_peer_is_respected() -> None:
    """One peer, no health policy: the group may skip its bookkeeping, but not the peer's max_conns."""
    group = make_group(peers=[{"url": "http://10.0.0.1:80", "max_conns": 1}])
    (a,) = group.peers
    assert group.select(ctx()) is a
    a.active = 1
    assert group.select(ctx()) is None and group.at_capacity()


def test_at_capacity_is_false_when_peers_are_down_rather_than_full() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80", "max_conns": 1}, {"url": "http://10.0.0.2:80"}])
    a, b = group.peers
    group.set_active_health(a, False, "down")
    group.set_active_health(b, False, "down")
    assert group.select(ctx()) is None and not group.at_capacity()  # 503 at once, no queueing


def test_least_conn_through_the_group() -> None:
    group = make_group(balance="least_conn")
    a, b, c = group.peers
    a.active, b.active, c.active = 4, 1, 2
    assert all(group.select(ctx()) is b for _ in range(20))


def test_max_outstanding_of_the_breaker_takes_a_busy_peer_out() -> None:
    group = make_group(breaker={"max_outstanding": 3})
    a, _b, _c = group.peers
    a.active = 3
    assert a not in [group.select(ctx()) for _ in range(30)]


def test_retry_after_keeps_a_peer_out_for_that_long() -> None:
    clock = Clock()
    group = make_group(clock)
    a, _b, _c = group.peers
    group.retry_after(a, 5)
    assert a.state(clock.now) == "retry-after"
    assert a not in [group.select(ctx()) for _ in range(30)]
    clock.advance(5.0)
    assert a in [group.select(ctx()) for _ in range(30)]


def first_try(group: UpstreamGroup, request: RequestContext | None = None) -> Peer | None:
    """How the engine picks the peer of a request's first try (engine/upstream_side.py)."""
    request = request or ctx()
    if group.quick is not None:
        return group.quick()
    if group.keyed is not None:
        return group.keyed(request)
    return group.select(request)


@pytest.mark.parametrize("balance", ["round_robin", "least_conn", "random", "p2c_ewma"])
def test_first_tries_spread_over_every_peer(balance: str) -> None:
    group = make_group(balance=balance)
    assert group.quick is not None  # nothing can take a peer out of service: no per-peer checks
    picked = Counter(first_try(group) for _ in range(300))
    assert set(picked) == set(group.peers)
    if balance == "round_robin":
        assert set(picked.values()) == {100}


def test_first_tries_follow_weights_and_a_single_peer() -> None:
    group = make_group(peers=[{"url": "http://10.0.0.1:80", "weight": 3}, {"url": "http://10.0.0.2:80"}])
    picked = Counter(p.label for p in (first_try(group) for _ in range(40)) if p is not None)
    assert picked == {"10.0.0.1:80": 30, "10.0.0.2:80": 10}
    single = make_group(peers=[{"url": "http://10.0.0.1:80"}])
    assert {first_try(single) for _ in range(5)} == {single.peers[0]}


def test_a_retry_after_suspends_the_quick_pick_until_it_runs_out() -> None:
    clock = Clock()
    group = make_group(clock)
    a, _b, _c = group.peers
    group.retry_after(a, 5)
    assert group.quick is None
    assert a not in [first_try(group) for _ in range(30)]
    clock.advance(5.0)
    assert a in [first_try(group) for _ in range(30)]
    assert group.quick is not None


def test_a_peer_marked_down_ends_the_quick_pick() -> None:
    group = make_group()
    a, _b, _c = group.peers
    group.set_active_health(a, False, "health check failed")
    assert group.quick is None
    assert a not in [first_try(group) for _ in range(30)]


def test_keyed_and_guarded_groups_have_no_quick_pick() -> None:
    assert make_group(balance="consistent_hash", hash_key="header:X-User").quick is None
    assert make_group(breaker={"failures": 3, "open_for": "10s"}).quick is None
    assert make_group(balance="consistent_hash", hash_key="header:X-User", breaker={}).keyed is None
    assert make_group(balance="consistent_hash", hash_key="cookie:sid").keyed is None  # select finds it
    assert make_group(balance="round_robin").keyed is None


def test_a_retry_after_suspends_the_keyed_pick_until_it_runs_out() -> None:
    clock = Clock()
    group = make_group(clock, balance="consistent_hash", hash_key="header:X-User")
    users = [ctx([(b"X-User", f"user{i}".encode())]) for i in range(60)]
    before = [first_try(group, u) for u in users]
    a = group.peers[0]
    assert a in before
    group.retry_after(a, 5)
    assert group.keyed is None
    assert a not in [first_try(group, u) for u in users]
    clock.advance(5.0)
    assert [first_try(group, u) for u in users] == before
    assert group.keyed is not None


# ============================================================================ sticky sessions


def test_sticky_cookie_pins_a_client_to_its_peer() -> None:
    group = make_group(sticky={"cookie": "srv", "max_age": "1h"})
    first = group.select(ctx())
    assert first is not None
    headers: Headers = []
    add_sticky_cookie(ctx(), group, first, headers)
    assert len(headers) == 1 and headers[0][0] == b"Set-Cookie"
    cookie = headers[0][1].decode()
    assert cookie.startswith(f"srv={sticky_token(first)};") and "Max-Age=3600" in cookie and "HttpOnly" in cookie
    assert "10.0.0" not in cookie  # the peer's address stays private
    pinned = ctx([(b"Host", b"x"), (b"Cookie", f"a=1; srv={sticky_token(first)}; b=2".encode())])
    assert all(group.select(pinned) is first for _ in range(50))
    # a client that already carries the right cookie is not sent it again
    again: Headers = []
    add_sticky_cookie(pinned, group, first, again)
    assert again == []


def test_sticky_pinned_peer_down_goes_elsewhere_and_the_cookie_is_replaced() -> None:
    group = make_group(sticky={})
    _a, b, _c = group.peers
    pinned = ctx([(b"Cookie", f"portcullis_peer={sticky_token(b)}".encode())])
    group.set_active_health(b, False, "down")
    other = group.select(pinned)
    assert other is not None and other is not b
    headers: Headers = []
    add_sticky_cookie(pinned, group, other, headers)
    assert headers and sticky_token(other) in headers[0][1].decode()


def test_sticky_ignored_on_a_retry_and_for_unknown_tokens() -> None:
    group = make_group(sticky={})
    a, _b, _c = group.peers
    pinned = ctx([(b"Cookie", f"portcullis_peer={sticky_token(a)}".encode())])
    assert all(group.select(pinned, (a,)) is not a for _ in range(20))
    forged = ctx([(b"Cookie", b"portcullis_peer=0123456789abcdef")])
    assert Counter(group.select(forged).label for _ in range(30)) == {p.label: 10 for p in group.peers}  # type: ignore[union-attr]


# ============================================================================ hash keys


@pytest.mark.parametrize(
    ("spec", "make"),
    [
        ("header:X-User", lambda v: ctx([(b"X-User", v.encode())])),
        ("cookie:sid", lambda v: ctx([(b"Cookie", f"other=1; sid={v}".encode())])),
        ("query:u", lambda v: ctx(target=f"/p?a=1&u={v}".encode())),
        ("path", lambda v: ctx(target=f"/users/{v}".encode())),
        ("client_ip", lambda v: ctx(client_ip=f"10.1.{len(v)}.{sum(map(ord, v)) % 250}")),
    ],
)
def test_consistent_hash_on_each_key_kind(spec: str, make: Any) -> None:
    group = make_group(balance="consistent_hash", hash_key=spec,
                       peers=[{"url": f"http://10.0.0.{i}:80"} for i in range(1, 6)])  # fmt: skip
    assert (group.keyed is not None) == (spec in ("header:X-User", "client_ip"))
    chosen = {}
    for i in range(200):
        v = f"user{i}"
        p = first_try(group, make(v))
        assert p is not None
        for _ in range(3):
            assert first_try(group, make(v)) is p
            assert group.select(make(v)) is p  # the general path agrees with the engine's quick one
        chosen[v] = p
    assert len({p.label for p in chosen.values()}) == 5
    # one peer down: only its keys move
    down = group.peers[0]
    group.set_active_health(down, False, "down")
    assert group.keyed is None
    for v, p in chosen.items():
        now = first_try(group, make(v))
        assert now is not down
        if p is not down:
            assert now is p


def test_ip_hash_uses_the_client_address_without_a_hash_key() -> None:
    group = make_group(balance="ip_hash")
    for i in range(50):
        c = ctx(client_ip=f"198.51.100.{i}")
        assert len({group.select(c) for _ in range(5)} | {first_try(group, c)}) == 1


def test_a_request_without_the_key_header_may_go_to_any_peer() -> None:
    group = make_group(balance="consistent_hash", hash_key="header:X-User")
    keyless = ctx([(b"Host", b"x"), (b"X-Other", b"1")])
    assert {first_try(group, keyless) for _ in range(200)} == set(group.peers)
    # the header's name in any case, its first value
    named = [first_try(group, ctx([(b"x-user", b"u7"), (b"X-USER", f"v{i}".encode())])) for i in range(20)]
    assert len(set(named)) == 1


# ============================================================================ outcomes: breaker, outlier, slow start


def test_breaker_through_record_and_select() -> None:
    clock = Clock()
    group = make_group(clock, breaker={"failures": 3, "open_for": "10s"})
    a, _b, _c = group.peers
    for _ in range(3):
        group.record(a, False, None)
    assert a.state(clock.now) == "breaker open" and "circuit breaker open" in a.reason
    assert a not in [group.select(ctx()) for _ in range(30)]
    clock.advance(10.0)
    seen = []
    for _ in range(9):  # like the exchange: a pick of `a` is its one probe
        p = group.select(ctx())
        assert p is not None and p.breaker is not None
        p.breaker.started()
        seen.append(p)
    assert seen.count(a) == 1
    group.record(a, True, 0.01)
    assert a.state(clock.now) == "up" and a.reason == "circuit breaker closed"
    assert a.recovered_at == clock.now  # slow start from here (when configured)


def test_outlier_ejection_through_record_and_recovery_on_the_clock() -> None:
    clock = Clock()
    group = make_group(clock, outlier={"min_requests": 5, "failure_rate": 0.5,
                                       "ejection": "10s", "max_ejection": "25s"})  # fmt: skip
    a, _b, _c = group.peers
    for _ in range(5):
        group.record(a, False, None)
    assert a.state(clock.now) == "ejected" and a.reason.startswith("ejected for 10s")
    assert a not in [group.select(ctx()) for _ in range(30)]
    clock.advance(10.0)
    assert a.state(clock.now) == "up"
    assert a in [group.select(ctx()) for _ in range(30)]
    for _ in range(5):
        group.record(a, False, None)
    assert a.reason.startswith("ejected for 20s")  # the second ejection lasts longer
    clock.advance(20.0)
    for _ in range(5):
        group.record(a, False, None)
    assert a.reason.startswith("ejected for 25s")  # capped


@pytest.mark.parametrize(("n", "share", "most"), [(4, 0.5, 2), (3, 0.5, 1), (5, 0.4, 2), (4, 1.0, 4), (4, 0.0, 0)])
def test_outlier_never_ejects_more_than_max_ejected_share(n: int, share: float, most: int) -> None:
    clock = Clock()
    group = make_group(clock, peers=[{"url": f"http://10.0.0.{i}:80"} for i in range(1, n + 1)],
                       outlier={"min_requests": 3, "max_ejected_share": share})  # fmt: skip
    for peer in group.peers:  # every peer fails
        for _ in range(10):
            group.record(peer, False, None)
    ejected = [p for p in group.peers if p.state(clock.now) == "ejected"]
    assert len(ejected) == most
    # the peers kept in service still answer selections
    if most < n:
        assert group.select(ctx()) not in ejected


def test_ewma_of_response_times() -> None:
    group = make_group(balance="p2c_ewma")  # the latency average is kept where it is used
    a = group.peers[0]
    group.record(a, True, 0.100)
    assert a.ewma == pytest.approx(0.100)
    group.record(a, True, 0.200)
    assert a.ewma == pytest.approx(0.130)  # decay 0.3
    group.record(a, False, None)
    assert a.ewma == pytest.approx(0.130)


def test_slow_start_ramps_the_weight_of_a_recovered_peer() -> None:
    clock = Clock()
    group = make_group(clock, slow_start="10s", health={},
                       peers=[{"url": "http://10.0.0.1:80", "weight": 10},
                              {"url": "http://10.0.0.2:80", "weight": 10}])  # fmt: skip
    a, _b = group.peers
    group.set_active_health(a, False, "down")
    assert a.state(clock.now) == "down" and a.reason == "down"
    group.set_active_health(a, True, "health check answered 200")
    assert a.weight == pytest.approx(0.5)  # 5 % to start with
    clock.advance(5.0)
    assert a.weight == pytest.approx(5.0)
    counts = select_many(group, 300)
    assert 0.25 < counts["10.0.0.1:80"] / 300 < 0.42  # 5 of 15
    clock.advance(5.0)
    assert a.weight == 10
    assert a.recovered_at == 0.0


def test_p2c_gives_a_peer_that_was_slow_once_another_chance_later() -> None:
    clock = Clock()
    group = make_group(clock, balance="p2c_ewma",
                       peers=[{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80"}])  # fmt: skip
    a, b = group.peers
    group.fade_latencies(clock.now)  # the worker's watchdog calls this a few times a second
    group.record(a, True, 1.0)  # one slow answer (a GC pause, a cold cache ...)
    group.record(b, True, 0.010)
    for _ in range(240):  # a minute
        clock.advance(0.25)
        group.fade_latencies(clock.now)
    assert a.ewma == pytest.approx(1.0 * 0.5 ** ((60.0 - 0.5) / 10.0), rel=0.02)  # halved every 10 s once quiet
    picked: Counter[str] = Counter()
    for _ in range(300):  # one request at a time, for a long while
        peer = group.select(ctx())
        assert peer is not None
        picked[peer.label] += 1
        group.record(peer, True, 0.010)  # whoever answers is fast now
        for _ in range(4):
            clock.advance(0.25)
            group.fade_latencies(clock.now)
    assert picked[a.label] > 0, picked


def test_a_peer_that_keeps_answering_keeps_its_latency_average() -> None:
    clock = Clock()
    group = make_group(clock, balance="p2c_ewma",
                       peers=[{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80"}])  # fmt: skip
    a, b = group.peers
    group.fade_latencies(clock.now)
    group.record(a, True, 0.200)
    group.record(b, True, 0.200)
    for _ in range(40):  # ten seconds: `a` answers every tick, `b` never again
        clock.advance(0.25)
        group.record(a, True, 0.200)
        group.fade_latencies(clock.now)
    assert a.ewma == pytest.approx(0.200)
    assert b.ewma < 0.200 * 0.6
