"""Per-worker request statistics: plain counters, cheap to bump on every request.

The master asks each worker for a snapshot when /metrics is scraped and merges them
(see `observability/metrics.py`), so the hot path never touches a metrics library.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

# seconds; the same buckets for request and upstream durations
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# methods with a label of their own; the rest are counted as "other"
_METHOD_CLASS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class WorkerStats:
    """Counters one worker keeps; every key is a tuple of label values."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.upstream_attempts: dict[tuple[str, str], int] = {}
        self.upstream_failures: dict[tuple[str, str, str], int] = {}
        self.upstream_durations: dict[tuple[str, str], Histogram] = {}
        self.upstream_retries: dict[tuple[str, str], int] = {}
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.waf_rule_matches: dict[tuple[str, str], int] = {}
        self.waf_blocked: dict[str, int] = {}
        self.waf_detected: dict[str, int] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        # the status is classed once per key in `snapshot`, not per request
        key = (route, method if method in _METHOD_CLASS else "other", status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = Histogram()
        hist.counts[bisect_left(BUCKETS, seconds)] += 1
        hist.sum += seconds

    def upstream_attempt(self, upstream: str, peer: str) -> None:
        key = (upstream, peer)
        self.upstream_attempts[key] = self.upstream_attempts.get(key, 0) + 1

    def upstream_failure(self, upstream: str, peer: str, kind: str) -> None:
        key = (upstream, peer, kind)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1

    def upstream_retry(self, upstream: str, reason: str) -> None:
        key = (upstream, reason)
        self.upstream_retries[key] = self.upstream_retries.get(key, 0) + 1

    def upstream_response(self, upstream: str, peer: str, seconds: float) -> None:
        key = (upstream, peer)
        hist = self.upstream_durations.get(key)
        if hist is None:
            hist = self.upstream_durations[key] = Histogram()
        hist.counts[bisect_left(BUCKETS, seconds)] += 1
        hist.sum += seconds

    def waf_match(self, route: str, rule_id: int) -> None:
        key = (route, str(rule_id))
        self.waf_rule_matches[key] = self.waf_rule_matches.get(key, 0) + 1

    def waf_verdict(self, route: str, blocked: bool) -> None:
        counts = self.waf_blocked if blocked else self.waf_detected
        counts[route] = counts.get(route, 0) + 1

    def reject(self, kind: str) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def _classed_requests(self) -> dict[tuple[str, str, str], int]:
        classed: dict[tuple[str, str, str], int] = {}
        for (route, method, status), count in self.requests.items():
            key = (route, method, f"{status // 100}xx")
            classed[key] = classed.get(key, 0) + count
        return classed

    def snapshot(self, gauges: dict[str, Any]) -> dict[str, Any]:
        """A JSON-able copy, sent to the master."""
        return {
            "requests": [[*k, v] for k, v in self._classed_requests().items()],
            "durations": {k: h.snapshot() for k, h in self.durations.items()},
            "upstream_attempts": [[*k, v] for k, v in self.upstream_attempts.items()],
            "upstream_failures": [[*k, v] for k, v in self.upstream_failures.items()],
            "upstream_retries": [[*k, v] for k, v in self.upstream_retries.items()],
            "upstream_durations": [[*k, h.snapshot()] for k, h in self.upstream_durations.items()],
            "connections_total": self.connections_total,
            "rejected": dict(self.rejected),
            "waf_rule_matches": [[*k, v] for k, v in self.waf_rule_matches.items()],
            "waf_blocked": [[k, v] for k, v in self.waf_blocked.items()],
            "waf_detected": [[k, v] for k, v in self.waf_detected.items()],
            "gauges": gauges,
        }
