"""The per-peer health state machines of portcullis/balancing/health.py, driven by an injected clock:
the circuit breaker, outlier ejection and the retry budget."""

from __future__ import annotations

import pytest

from portcullis.balancing.health import Breaker, BreakerPolicy, BreakerState, Outlier, OutlierPolicy, RetryBudget

# ============================================================================ circuit breaker


def test_breaker_opens_after_n_consecutive_failures() -> None:
    b = Breaker(BreakerPolicy(failures=3, open_for=10.0))
    assert b.state is BreakerState.CLOSED and b.allows(0.0)
    assert b.record(False, 1.0) is False
    assert b.record(False, 2.0) is False
    assert b.allows(2.0)
    assert b.record(False, 3.0) is True  # the third: state changed
    assert b.state is BreakerState.OPEN
    assert not b.allows(3.0)
    assert not b.allows(12.999)


def test_breaker_counts_consecutive_failures_only() -> None:
    b = Breaker(BreakerPolicy(failures=3, open_for=10.0))
    for t, ok in enumerate([False, False, True, False, False, True, False, False]):
        assert b.record(ok, float(t)) is False
    assert b.state is BreakerState.CLOSED
    assert b.record(False, 9.0) is True and b.state is BreakerState.OPEN


def _opened(now: float = 100.0, failures: int = 2, open_for: float = 5.0) -> Breaker:
    b = Breaker(BreakerPolicy(failures=failures, open_for=open_for))
    for _ in range(failures):
        b.record(False, now)
    assert b.state is BreakerState.OPEN
    return b


def test_breaker_half_opens_after_open_for_with_exactly_one_probe() -> None:
    b = _opened(100.0, open_for=5.0)
    assert not b.allows(104.99)
    assert b.state is BreakerState.OPEN
    assert b.allows(105.0)  # open_for has passed: half-open
    assert b.state is BreakerState.HALF_OPEN
    assert b.allows(105.0)  # asking again lets nobody else through: nothing was started yet
    b.started()  # the probe goes out
    assert not b.allows(105.1)
    assert not b.allows(109.99)  # while the probe is out (up to open_for), it stays the only one
    b.started()  # (a request started while closed or open is not a probe)


def test_breaker_probe_success_closes() -> None:
    b = _opened(100.0, open_for=5.0)
    assert b.allows(106.0)
    b.started()
    assert b.record(True, 106.5) is True
    assert b.state is BreakerState.CLOSED
    assert b.allows(106.6) and b.allows(106.7)
    # and the failure count started over
    assert b.record(False, 107.0) is False and b.state is BreakerState.CLOSED


def test_breaker_probe_failure_reopens_for_another_open_for() -> None:
    b = _opened(100.0, open_for=5.0)
    assert b.allows(105.0)
    b.started()
    assert b.record(False, 105.5) is True  # one failure is enough in half-open
    assert b.state is BreakerState.OPEN
    assert not b.allows(110.4)  # counted from the probe's failure, not from the first opening
    assert b.allows(110.5)
    b.started()
    assert not b.allows(110.6)
    assert b.record(True, 111.0) is True and b.state is BreakerState.CLOSED


# ============================================================================ outlier detection

POLICY = OutlierPolicy(failure_rate=0.5, window=10.0, min_requests=10, ejection=10.0, max_ejection=25.0)


def test_outlier_waits_for_min_requests() -> None:
    o = Outlier(POLICY)
    for i in range(9):
        assert o.record(False, float(i) * 0.1) is False  # 9 failures of 9: not enough requests yet
    assert o.record(False, 0.95) is True


def test_outlier_ejects_on_the_failure_rate() -> None:
    o = Outlier(POLICY)
    outcomes = [True, False] * 3 + [True, True, True]  # 3 failures of 9
    for i, ok in enumerate(outcomes):
        assert o.record(ok, i * 0.1) is False
    assert o.record(True, 1.0) is False  # 3 of 10: 30 % < 50 %
    assert o.record(False, 1.1) is False  # 4 of 11
    assert o.record(False, 1.2) is False  # 5 of 12
    assert o.record(False, 1.3) is False  # 6 of 13 = 46 %
    assert o.record(False, 1.4) is True  # 7 of 14 = 50 %: eject


def test_outlier_rate_threshold_is_inclusive() -> None:
    o = Outlier(POLICY)
    for i in range(5):
        o.record(True, i * 0.1)
    for i in range(4):
        assert o.record(False, 0.5 + i * 0.1) is False
    assert o.record(False, 1.0) is True  # 5 of 10 = 50 %: ejected


def test_outlier_window_forgets_old_failures() -> None:
    o = Outlier(POLICY)
    for i in range(10):
        o.record(False, i * 0.1)
    # 20 s later the old failures are out of the 10 s window: ten successes, then a failure
    for i in range(10):
        assert o.record(True, 20.0 + i * 0.1) is False
    assert o.record(False, 21.5) is False


def test_ejections_grow_and_are_capped() -> None:
    o = Outlier(POLICY)
    assert not o.ejected(0.0)
    assert o.eject(0.0) == 10.0  # base
    assert o.ejected(9.99) and not o.ejected(10.0)
    assert o.eject(20.0) == 20.0  # base x 2
    assert o.ejected(39.9) and not o.ejected(40.0)
    assert o.eject(50.0) == 25.0  # base x 3 = 30, capped at 25
    assert o.eject(100.0) == 25.0
    assert o.ejections == 4


def test_ejection_starts_a_fresh_window() -> None:
    o = Outlier(POLICY)
    for i in range(10):
        o.record(False, i * 0.1)
    o.eject(1.0)
    # back after the ejection, the failures from before do not count
    assert o.record(False, 11.5) is False


# ============================================================================ retry budget


def test_retry_budget_starts_with_its_capacity() -> None:
    b = RetryBudget(0.2, capacity=10.0)
    assert sum(b.try_retry() for _ in range(50)) == 10


@pytest.mark.parametrize(("ratio", "capacity", "requests"), [(0.2, 10.0, 1000), (0.1, 5.0, 500), (0.5, 2.0, 300)])
def test_retry_budget_caps_retries_when_every_request_wants_one(ratio: float, capacity: float, requests: int) -> None:
    """Every request fails and asks for a retry (a retry storm): retries stay near ratio x requests + capacity."""
    b = RetryBudget(ratio, capacity)
    granted = 0
    for _ in range(requests):
        b.requests += 1
        granted += b.try_retry()
    assert ratio * requests + capacity - 1 <= granted <= ratio * requests + capacity


def test_retry_budget_refills_with_requests_but_not_beyond_capacity() -> None:
    b = RetryBudget(0.2, capacity=10.0)
    b.requests += 1000  # a long quiet time: tokens stay capped at the capacity
    assert sum(b.try_retry() for _ in range(100)) == 10
    b.requests += 5  # 5 more requests earn one retry
    assert b.try_retry() is True
    assert b.try_retry() is False


def test_zero_budget_allows_only_the_start_capacity() -> None:
    b = RetryBudget(0.0, capacity=3.0)
    b.requests += 10000
    assert sum(b.try_retry() for _ in range(10)) == 3


def test_breaker_probe_that_never_reports_back_does_not_keep_the_peer_out_for_good() -> None:
    """The exchange says nothing about a try it abandons (the client went away: `_settle(None)`). A
    half-open breaker whose probe was abandoned must let another probe through after `open_for`,
    or the peer would never be used again."""
    b = _opened(100.0, open_for=5.0)
    assert b.allows(105.0)
    b.started()  # the probe goes out ... and its client hangs up: no record() ever comes
    assert not b.allows(109.9)
    assert b.allows(110.0)  # presumed lost after open_for: one more probe
    b.started()
    assert not b.allows(110.1)
    assert b.record(True, 110.2) is True and b.state is BreakerState.CLOSED
