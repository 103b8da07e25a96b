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


class RouteCounters:
    """One route's requests and durations. A route holds its own, so a request's count is
    two attribute reads and a dict update, with no key built from the route's name."""

    __slots__ = ("durations", "requests")

    def __init__(self) -> None:
        # (method, status): the status is classed once per key in `snapshot`, not per request
        self.requests: dict[tuple[str, int], int] = {}
        self.durations = Histogram()

    def count(self, method: str, status: int, seconds: float) -> None:
        key = (method if method in _METHOD_CLASS else "other", status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        durations = self.durations  # Histogram.observe, without the call: this runs per request
        durations.counts[bisect_left(BUCKETS, seconds)] += 1
        durations.sum += seconds


class PeerCounters:
    """One upstream peer's attempts and response times, held by the peer (`Peer.counters`)."""

    __slots__ = ("attempts", "durations")

    def __init__(self) -> None:
        self.attempts = 0
        self.durations = Histogram()


class WorkerStats:
    """Counters one worker keeps; every key is a tuple of label values."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteCounters] = {}
        self.peers: dict[tuple[str, str], PeerCounters] = {}
        self.upstream_failures: dict[tuple[str, str, str], int] = {}
        self.upstream_retries: dict[tuple[str, str], int] = {}
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.waf_rule_matches: dict[tuple[str, str], int] = {}
        self.waf_blocked: dict[str, int] = {}
        self.waf_detected: dict[str, int] = {}

    def route(self, name: str) -> RouteCounters:
        """The counters of a route (by name: a reload's route of the same name goes on counting)."""
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def peer(self, upstream: str, peer: str) -> PeerCounters:
        """The counters of a peer of an upstream, kept across reloads like the route's."""
        counters = self.peers.get((upstream, peer))
        if counters is None:
            counters = self.peers[(upstream, peer)] = PeerCounters()
        return counters

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """A request outside any route's counters (answered before routing, or by no route)."""
        self.route(route).count(method, status, seconds)

    def upstream_failure(self, upstream: str, peer: str, kind: str) -> None:
        key = (upstream, peer, kind)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1

    def upstream_retry(self, upstream: str, reason: str) -> None:
        key = (upstream, reason)
        self.upstream_retries[key] = self.upstream_retries.get(key, 0) + 1

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
        for route, counters in self.routes.items():
            for (method, status), count in counters.requests.items():
                key = (route, method, f"{status // 100}xx")
                classed[key] = classed.get(key, 0) + count
        return classed

    def snapshot(self, gauges: dict[str, Any]) -> dict[str, Any]:
        """A JSON-able copy, sent to the master."""
        return {
            "requests": [[*k, v] for k, v in self._classed_requests().items()],
            "durations": {k: c.durations.snapshot() for k, c in self.routes.items() if c.requests},
            "upstream_attempts": [[*k, c.attempts] for k, c in self.peers.items() if c.attempts],
            "upstream_failures": [[*k, v] for k, v in self.upstream_failures.items()],
            "upstream_retries": [[*k, v] for k, v in self.upstream_retries.items()],
            "upstream_durations": [
                [*k, c.durations.snapshot()] for k, c in self.peers.items() if any(c.durations.counts)
            ],
            "connections_total": self.connections_total,
            "rejected": dict(self.rejected),
            "waf_rule_matches": [[*k, v] for k, v in self.waf_rule_matches.items()],
            "waf_blocked": [[k, v] for k, v in self.waf_blocked.items()],
            "waf_detected": [[k, v] for k, v in self.waf_detected.items()],
            "gauges": gauges,
        }
