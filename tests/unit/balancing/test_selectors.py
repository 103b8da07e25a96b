"""The selection rules of portcullis/balancing/selectors.py, as pure functions of the peers' figures
and a seeded random source: each selector's distribution, and that ineligible peers are skipped."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from portcullis.balancing.selectors import (
    SELECTORS,
    IpHash,
    LeastConn,
    Maglev,
    P2CEwma,
    RandomChoice,
    RoundRobin,
    Selector,
)


@dataclass(eq=False)
class FakePeer:
    key: str
    weight: float = 1.0
    active: int = 0
    ewma: float = 0.0

    def __repr__(self) -> str:
        return self.key


def peers(*weights: float) -> list[FakePeer]:
    return [FakePeer(f"http://10.0.0.{i + 1}:80", w) for i, w in enumerate(weights)]


def picks(selector: Selector, n: int, **kwargs: object) -> list[FakePeer]:
    out = []
    for _ in range(n):
        p = selector.pick(**kwargs)  # type: ignore[arg-type]
        assert p is not None
        out.append(p)  # type: ignore[arg-type]
    return out


def names(seq: list[FakePeer], ps: list[FakePeer]) -> str:
    letters = {id(p): "abcdefghij"[i] for i, p in enumerate(ps)}
    return "".join(letters[id(p)] for p in seq)


# ============================================================================ round robin

def test_round_robin_is_the_nginx_smooth_sequence() -> None:
    ps = peers(5, 1, 1)
    rr = RoundRobin(ps)
    # nginx's documented example for weights 5, 1, 1: a a b a c a a, then again
    assert names(picks(rr, 14), ps) == "aabacaa" * 2


@pytest.mark.parametrize("weights", [(1, 1, 1), (2, 1), (3, 2, 1), (5, 1, 1), (10, 3, 2, 1), (7, 7, 1, 1, 4)])
def test_round_robin_is_exact_over_every_cycle(weights: tuple[int, ...]) -> None:
    ps = peers(*weights)
    rr = RoundRobin(ps)
    total = sum(weights)
    for _cycle in range(5):
        counts = Counter(id(p) for p in picks(rr, total))
        assert [counts[id(p)] for p in ps] == list(weights)


@pytest.mark.parametrize("seed", range(30))
def test_round_robin_interleaves(seed: int) -> None:
    """Smooth, not in bursts: after any prefix of k picks each peer has had its share k*w/W to within
    less than one pick, and a peer's runs are at most ceil(w / (W - w)) + 1 long (5, 1, 1 in bursts
    would give a a a a a b c: five in a row, and 1.4 picks ahead of its share after five)."""
    rng = random.Random(seed)
    weights = [rng.randint(1, 10) for _ in range(rng.randint(2, 6))]
    ps = peers(*weights)
    total = sum(weights)
    seq = picks(RoundRobin(ps), total * 3)
    counts: Counter[int] = Counter()
    for k, p in enumerate(seq, 1):
        counts[id(p)] += 1
        for q, w in zip(ps, weights, strict=True):
            assert abs(counts[id(q)] - k * w / total) < 1.0, (weights, k, names(seq, ps))
    run = 1
    for prev, cur in itertools.pairwise(seq):
        run = run + 1 if prev is cur else 1
        assert run <= math.ceil(cur.weight / (total - cur.weight)) + 1, (weights, names(seq, ps))


def test_round_robin_with_equal_weights_alternates() -> None:
    ps = peers(1, 1, 1)
    assert names(picks(RoundRobin(ps), 9), ps) == "abcabcabc"


def test_round_robin_skips_ineligible_peers_and_keeps_the_others_ratio() -> None:
    ps = peers(3, 1, 2)
    rr = RoundRobin(ps)
    down = ps[2]
    seq = picks(rr, 40, eligible=lambda p: p is not down)
    assert down not in seq
    counts = Counter(id(p) for p in seq)
    assert (counts[id(ps[0])], counts[id(ps[1])]) == (30, 10)
    assert rr.pick(eligible=lambda p: False) is None


# ============================================================================ least connections

def test_least_conn_picks_the_least_loaded_relative_to_weight() -> None:
    a, b, c = peers(1, 3, 1)
    a.active, b.active, c.active = 2, 3, 5  # loads 2, 1, 5
    lc = LeastConn([a, b, c], random.Random(1))
    assert all(p is b for p in picks(lc, 50))
    b.active = 9  # load 3: a (2) is now the least loaded
    assert all(p is a for p in picks(lc, 50))


def test_least_conn_breaks_ties_at_random() -> None:
    ps = peers(1, 1, 1, 2)
    ps[3].active = 2  # load 1, like the others' once they have 1 each
    for p in ps[:3]:
        p.active = 1
    lc = LeastConn(ps, random.Random(7))
    counts = Counter(id(p) for p in picks(lc, 8000))
    for p in ps:
        assert 0.2 < counts[id(p)] / 8000 < 0.3, counts
    # and the order of the tied peers does not decide: a seeded source gives a reproducible mix
    again = LeastConn(ps, random.Random(7))
    assert picks(again, 50) == picks(LeastConn(ps, random.Random(7)), 50)


def test_least_conn_with_fixed_equal_weights_picks_the_least_and_breaks_ties_at_random() -> None:
    """The path an upstream without slow start takes: weights read once, all the same."""
    ps = peers(1, 1, 1, 1)
    lc = LeastConn(ps, random.Random(5))
    lc.fix_weights([1.0] * 4)
    for p, n in zip(ps, (3, 1, 1, 1), strict=True):
        p.active = n
    counts = Counter(id(p) for p in picks(lc, 9000))
    assert counts[id(ps[0])] == 0
    for p in ps[1:]:
        assert 0.28 < counts[id(p)] / 9000 < 0.39, counts
    ps[2].active = 0
    assert all(p is ps[2] for p in picks(lc, 20))


@pytest.mark.parametrize("n", [3, 8])
def test_least_conn_ties_among_scattered_peers_are_even(n: int) -> None:
    """Reservoir sampling over the tied peers: each wins about equally often, wherever it stands."""
    ps = peers(*[1] * n)
    lc = LeastConn(ps, random.Random(9))
    lc.fix_weights([1.0] * n)
    tied = [ps[0], ps[-1]] if n == 3 else [ps[1], ps[4], ps[6]]
    for p in ps:
        p.active = 0 if p in tied else 2
    counts = Counter(id(p) for p in picks(lc, 9000))
    assert set(counts) == {id(p) for p in tied}
    for p in tied:
        assert abs(counts[id(p)] / 9000 - 1 / len(tied)) < 0.05, counts


def test_least_conn_follows_the_load_as_requests_start() -> None:
    """Picking and then counting the request in flight spreads N*k requests k per peer."""
    ps = peers(1, 1, 1, 1)
    lc = LeastConn(ps, random.Random(3))
    for _ in range(40):
        p = lc.pick()
        assert p is not None
        p.active += 1  # type: ignore[attr-defined]
    assert [p.active for p in ps] == [10, 10, 10, 10]


def test_least_conn_skips_ineligible_peers() -> None:
    ps = peers(1, 1, 1)
    ps[0].active = 0
    ps[1].active = 5
    ps[2].active = 5
    lc = LeastConn(ps, random.Random(0))
    seq = picks(lc, 200, eligible=lambda p: p is not ps[0])
    assert ps[0] not in seq and {id(p) for p in seq} == {id(ps[1]), id(ps[2])}
    assert lc.pick(eligible=lambda p: False) is None


# ============================================================================ random

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_respects_weights(seed: int) -> None:
    ps = peers(1, 2, 7)
    rc = RandomChoice(ps, random.Random(seed))
    n = 30000
    counts = Counter(id(p) for p in picks(rc, n))
    for p, expected in zip(ps, (0.1, 0.2, 0.7), strict=True):
        assert abs(counts[id(p)] / n - expected) < 0.015, (counts, expected)


def test_random_skips_ineligible_peers() -> None:
    ps = peers(1, 1, 1)
    rc = RandomChoice(ps, random.Random(5))
    seq = picks(rc, 3000, eligible=lambda p: p is not ps[1])
    counts = Counter(id(p) for p in seq)
    assert counts[id(ps[1])] == 0
    assert 0.45 < counts[id(ps[0])] / 3000 < 0.55
    assert rc.pick(eligible=lambda p: False) is None


# ============================================================================ P2C on EWMA

def test_p2c_always_prefers_the_faster_of_two() -> None:
    fast, slow = FakePeer("fast", ewma=0.010), FakePeer("slow", ewma=0.100)
    p2c = P2CEwma([slow, fast], random.Random(11))
    assert all(p is fast for p in picks(p2c, 500))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p2c_strongly_avoids_one_slow_peer_among_many(seed: int) -> None:
    ps = [FakePeer(f"p{i}", ewma=0.010) for i in range(5)]
    slow = ps[2]
    slow.ewma = 0.200
    p2c = P2CEwma(ps, random.Random(seed))
    counts = Counter(id(p) for p in picks(p2c, 10000))
    # the slow peer loses every comparison: it never wins while its cost is the highest
    assert counts[id(slow)] == 0
    for p in ps:
        if p is not slow:
            assert 0.2 < counts[id(p)] / 10000 < 0.3


@pytest.mark.parametrize(("n", "fixed"), [(6, True), (6, False), (70, True)])
def test_p2c_draws_every_pair_with_many_peers(n: int, fixed: bool) -> None:
    """Pairs listed once (up to 64 peers) and drawn from one number beyond: the slowest peer never
    wins, every other peer does."""
    ps = [FakePeer(f"p{i}", ewma=0.010) for i in range(n)]
    ps[n // 2].ewma = 0.500
    p2c = P2CEwma(ps, random.Random(4))
    if fixed:
        p2c.fix_weights([1.0] * n)
    counts = Counter(id(p) for p in picks(p2c, 200 * n))
    assert id(ps[n // 2]) not in counts
    assert len(counts) == n - 1


def test_p2c_weighs_latency_against_outstanding_requests() -> None:
    """The cost is latency x (in flight + 1) / weight: a fast peer that is already loaded loses."""
    fast, slow = FakePeer("fast", ewma=0.010, active=20), FakePeer("slow", ewma=0.050, active=0)
    p2c = P2CEwma([fast, slow], random.Random(4))
    assert p2c.pick() is slow
    fast.active = 3  # 0.010 * 4 < 0.050 * 1
    assert p2c.pick() is fast
    heavy = FakePeer("heavy", weight=10, ewma=0.050, active=0)
    assert P2CEwma([fast, heavy], random.Random(4)).pick() is heavy  # 0.005 per weight unit < 0.04


def test_p2c_simulated_latency_gives_the_slow_peer_few_requests() -> None:
    """A closed loop: the EWMA each peer earns from its latency steers the picks away from it."""
    rng = random.Random(9)
    ps = [FakePeer(f"p{i}") for i in range(3)]
    latency = {id(ps[0]): 0.005, id(ps[1]): 0.005, id(ps[2]): 0.050}
    p2c = P2CEwma(ps, rng)
    counts: Counter[int] = Counter()
    for _ in range(3000):
        p = p2c.pick()
        assert isinstance(p, FakePeer)
        counts[id(p)] += 1
        observed = latency[id(p)] * rng.uniform(0.8, 1.2)
        p.ewma = observed if p.ewma == 0.0 else p.ewma + 0.3 * (observed - p.ewma)
    assert counts[id(ps[2])] / 3000 < 0.05, counts


@pytest.mark.parametrize("n", [2, 3, 8])
def test_p2c_quick_pick_makes_the_same_choices_as_pick(n: int) -> None:
    """The first try's callable (`quick`) draws and compares exactly as `pick` does, loads and
    latencies changing between picks."""
    load = random.Random(5)
    ps = [FakePeer(f"p{i}", ewma=0.010) for i in range(n)]
    by_pick, by_quick = P2CEwma(ps, random.Random(3)), P2CEwma(ps, random.Random(3))
    for selector in (by_pick, by_quick):
        selector.fix_weights([1.0] * n)
    quick = by_quick.quick()
    assert quick != by_quick.pick  # equal weights: the specialised callable
    for _ in range(2000):
        for p in ps:
            p.active, p.ewma = load.randrange(4), load.choice((0.010, 0.012, 0.050))
        assert quick() is by_pick.pick()


def test_p2c_quick_is_plain_pick_when_weights_differ_or_may_change() -> None:
    ps = peers(1, 2, 1)
    p2c = P2CEwma(ps, random.Random(0))
    assert p2c.quick() == p2c.pick  # weights not fixed (slow start may change them)
    p2c.fix_weights([1.0, 2.0, 1.0])
    assert p2c.quick() == p2c.pick


def test_p2c_with_one_or_no_eligible_peer() -> None:
    ps = peers(1, 1, 1)
    p2c = P2CEwma(ps, random.Random(0))
    assert p2c.pick(eligible=lambda p: p is ps[1]) is ps[1]
    assert p2c.pick(eligible=lambda p: False) is None
    seq = picks(p2c, 300, eligible=lambda p: p is not ps[0])
    assert ps[0] not in seq


# ============================================================================ Maglev / consistent hash

KEYS = [f"user-{i}".encode() for i in range(20000)]


def assignment(selector: Selector, eligible: object = None) -> dict[bytes, str]:
    out = {}
    for key in KEYS:
        p = selector.pick(key) if eligible is None else selector.pick(key, eligible)  # type: ignore[arg-type]
        assert p is not None
        out[key] = p.key
    return out


def test_maglev_same_key_same_peer_across_instances() -> None:
    ps = peers(1, 1, 1, 1, 1)
    first = Maglev(ps, random.Random(1))
    second = Maglev(list(reversed(peers(1, 1, 1, 1, 1))), random.Random(2))  # same keys, other order
    for key in KEYS[:2000]:
        a = first.pick(key)
        assert a is not None
        assert first.pick(key) is a
        b = second.pick(key)
        assert b is not None and b.key == a.key


@pytest.mark.parametrize("n", [3, 5, 10])
def test_maglev_spreads_keys_evenly(n: int) -> None:
    counts = Counter(assignment(Maglev(peers(*[1] * n))).values())
    assert len(counts) == n
    for c in counts.values():
        assert 0.8 / n < c / len(KEYS) < 1.2 / n, counts


def test_maglev_respects_weights() -> None:
    ps = peers(1, 2, 1)
    counts = Counter(assignment(Maglev(ps)).values())
    assert 0.45 < counts[ps[1].key] / len(KEYS) < 0.55, counts


@pytest.mark.parametrize("n", [3, 5, 8, 10])
def test_maglev_removing_one_peer_moves_about_one_nth(n: int) -> None:
    ps = peers(*[1] * n)
    before = assignment(Maglev(ps))
    gone = ps[n // 2]
    after = assignment(Maglev([p for p in ps if p is not gone]))
    moved = sum(1 for k in KEYS if before[k] != after[k])
    share = moved / len(KEYS)
    assert 0.5 / n < share < 2.0 / n, (n, share)
    # the removed peer's keys must move; of the others', only a small minority does
    assert all(after[k] != gone.key for k in KEYS)
    kept = [k for k in KEYS if before[k] != gone.key]
    assert sum(1 for k in kept if before[k] != after[k]) / len(kept) < 0.5 / n


@pytest.mark.parametrize("n", [3, 5, 10])
def test_maglev_ineligible_peer_moves_only_its_own_keys(n: int) -> None:
    ps = peers(*[1] * n)
    mg = Maglev(ps)
    before = assignment(mg)
    down = ps[0]
    after = assignment(mg, lambda p: p is not down)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert set(moved) == {k for k in KEYS if before[k] == down.key}
    assert 0.5 / n < len(moved) / len(KEYS) < 2.0 / n
    # and they are spread over the others, not all piled on one neighbour
    if n > 2:
        assert len({after[k] for k in moved}) >= min(n - 1, 3)
    assert mg.pick(b"x", lambda p: False) is None


def test_maglev_without_a_key_picks_at_random() -> None:
    ps = peers(1, 1, 1)
    mg = Maglev(ps, random.Random(3))
    counts = Counter(id(p) for p in picks(mg, 3000))
    assert all(0.25 < c / 3000 < 0.42 for c in counts.values()) and len(counts) == 3


def test_ip_hash_is_consistent_per_address() -> None:
    ps = peers(1, 1, 1, 1)
    ih = IpHash(ps)
    seen = {}
    for i in range(256):
        ip = f"192.0.2.{i}".encode()
        p = ih.pick(ip)
        assert p is not None and ih.pick(ip) is p
        seen[ip] = p.key
    assert len(set(seen.values())) == 4


# ============================================================================ every selector

@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_returns_none_when_nothing_is_eligible_and_never_an_ineligible_peer(name: str) -> None:
    ps = peers(1, 2, 3, 1)
    sel = SELECTORS[name](ps, random.Random(0))
    assert sel.pick(b"k", lambda p: False) is None
    ok = {id(ps[1]), id(ps[3])}
    for i in range(500):
        p = sel.pick(f"k{i}".encode(), lambda p: id(p) in ok)
        assert p is not None and id(p) in ok


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_with_no_peers(name: str) -> None:
    assert SELECTORS[name]([], random.Random(0)).pick(b"k") is None
