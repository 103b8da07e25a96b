"""Per-peer health state machines, pure and driven by an injected clock.

- `Breaker`: closed -> open after `failures` consecutive failures; after `open_for` it lets one
  probe through (half-open); the probe's success closes it, its failure opens it again.
- `Outlier`: passive ejection on the failure rate in a sliding window; each ejection of the
  same peer lasts longer (base x number of ejections, capped).
Active health checks (run by the master) set `PeerHealth.active_ok` directly.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    open_for: float = 10.0


class Breaker:
    __slots__ = ("_failures", "_opened_at", "_probe_at", "_probing", "policy", "state")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0

    def allows(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.policy.open_for:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is not BreakerState.HALF_OPEN:
            return False
        if self._probing and now - self._probe_at >= self.policy.open_for:
            self._probing = False  # a probe that never reported back (its client left): presumed lost
        if not self._probing:
            self._probe_at = now  # if this peer is picked, its probe starts now
        return not self._probing

    def started(self) -> None:
        """A request was sent; in half-open state it is the one probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def record(self, ok: bool, now: float) -> bool:
        """Count an outcome; True when the state changed."""
        before = self.state
        if ok:
            self._failures = 0
            self.state = BreakerState.CLOSED
            self._probing = False
        else:
            self._failures += 1
            if self.state is BreakerState.HALF_OPEN or self._failures >= self.policy.failures:
                self.state = BreakerState.OPEN
                self._opened_at = now
                self._probing = False
        return self.state is not before


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    failure_rate: float = 0.5
    window: float = 10.0
    min_requests: int = 10
    ejection: float = 10.0
    max_ejection: float = 300.0
    max_ejected_share: float = 0.5


class Outlier:
    __slots__ = ("_events", "ejected_until", "ejections", "policy")

    def __init__(self, policy: OutlierPolicy) -> None:
        self.policy = policy
        self._events: deque[tuple[float, bool]] = deque()
        self.ejected_until = 0.0
        self.ejections = 0

    def record(self, ok: bool, now: float) -> bool:
        """Count an outcome; True when the failure rate says this peer should be ejected."""
        events = self._events
        events.append((now, ok))
        horizon = now - self.policy.window
        while events and events[0][0] < horizon:
            events.popleft()
        if len(events) < self.policy.min_requests:
            return False
        failures = sum(1 for _, good in events if not good)
        return failures / len(events) >= self.policy.failure_rate

    def eject(self, now: float) -> float:
        """Eject now; returns for how long. Each ejection lasts longer than the last."""
        self.ejections += 1
        duration = min(self.policy.ejection * self.ejections, self.policy.max_ejection)
        self.ejected_until = now + duration
        self._events.clear()
        return duration

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


class RetryBudget:
    """At most `ratio` of requests may be retries, with a little room to start: each request
    earns `ratio` of a token (counted lazily, so a request costs one increment), each retry
    spends one."""

    __slots__ = ("_counted", "capacity", "ratio", "requests", "tokens")

    def __init__(self, ratio: float, capacity: float = 10.0) -> None:
        self.ratio = ratio
        self.capacity = capacity
        self.tokens = capacity
        self.requests = 0
        self._counted = 0

    def try_retry(self) -> bool:
        earned = (self.requests - self._counted) * self.ratio
        self._counted = self.requests
        self.tokens = min(self.capacity, self.tokens + earned)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
