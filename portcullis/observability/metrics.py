"""Every Prometheus metric, declared here once and rendered from the workers' merged stats."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from portcullis.observability.stats import BUCKETS


def _merge_counts(snapshots: Iterable[dict[str, Any]], key: str) -> dict[tuple[str, ...], float]:
    merged: dict[tuple[str, ...], float] = {}
    for snap in snapshots:
        for *labels, value in snap.get(key, []):
            merged[tuple(labels)] = merged.get(tuple(labels), 0) + value
    return merged


def _merge_hist(
    items: Iterable[tuple[tuple[str, ...], dict[str, Any]]],
) -> dict[tuple[str, ...], dict[str, Any]]:
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for labels, hist in items:
        into = merged.setdefault(labels, {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0})
        into["counts"] = [a + b for a, b in zip(into["counts"], hist["counts"], strict=True)]
        into["sum"] += hist["sum"]
    return merged


def _histogram(name: str, doc: str, labels: list[str], data: dict[tuple[str, ...], dict[str, Any]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, hist in data.items():
        cumulative, buckets = 0, []
        for bound, count in zip([*BUCKETS, float("inf")], hist["counts"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(list(label_values), buckets, hist["sum"])
    return family


def _waf(snaps: list[dict[str, Any]]) -> Iterator[Metric]:
    matches = CounterMetricFamily(
        "portcullis_waf_rule_matches", "WAF rules that matched, by route and rule id.", labels=["route", "rule"]
    )
    for labels, value in _merge_counts(snaps, "waf_rule_matches").items():
        matches.add_metric(list(labels), value)
    yield matches
    blocked = CounterMetricFamily("portcullis_waf_blocked", "Transactions the WAF blocked.", labels=["route"])
    for labels, value in _merge_counts(snaps, "waf_blocked").items():
        blocked.add_metric(list(labels), value)
    yield blocked
    detected = CounterMetricFamily(
        "portcullis_waf_detected", "Transactions the WAF would have blocked (detect mode).", labels=["route"]
    )
    for labels, value in _merge_counts(snaps, "waf_detected").items():
        detected.add_metric(list(labels), value)
    yield detected


class _Collector:
    def __init__(self, snapshots: list[dict[str, Any]], master: dict[str, Any]) -> None:
        self.snapshots = snapshots
        self.master = master

    def collect(self) -> Iterator[Metric]:
        snaps = self.snapshots
        requests = CounterMetricFamily(
            "portcullis_requests", "Requests answered, by route, method and status class.",
            labels=["route", "method", "status_class"],
        )  # fmt: skip
        for labels, value in _merge_counts(snaps, "requests").items():
            requests.add_metric(list(labels), value)
        yield requests
        durations = _merge_hist(((route,), h) for s in snaps for route, h in s.get("durations", {}).items())
        yield _histogram(
            "portcullis_request_duration_seconds", "Time from request head to the end of the response.",
            ["route"], durations,
        )  # fmt: skip
        attempts = CounterMetricFamily(
            "portcullis_upstream_attempts", "Requests sent to upstream peers.", labels=["upstream", "peer"]
        )
        for labels, value in _merge_counts(snaps, "upstream_attempts").items():
            attempts.add_metric(list(labels), value)
        yield attempts
        failures = CounterMetricFamily(
            "portcullis_upstream_failures",
            "Failed upstream attempts, by kind.",
            labels=["upstream", "peer", "kind"],
        )
        for labels, value in _merge_counts(snaps, "upstream_failures").items():
            failures.add_metric(list(labels), value)
        yield failures
        retries = CounterMetricFamily(
            "portcullis_upstream_retries", "Requests sent again, by reason.", labels=["upstream", "reason"]
        )
        for labels, value in _merge_counts(snaps, "upstream_retries").items():
            retries.add_metric(list(labels), value)
        yield retries
        up_hist = _merge_hist(
            (tuple(item[:2]), item[2]) for s in snaps for item in s.get("upstream_durations", [])
        )
        yield _histogram(
            "portcullis_upstream_response_seconds", "Time from sending a request to the peer's response head.",
            ["upstream", "peer"], up_hist,
        )  # fmt: skip
        rejected = CounterMetricFamily(
            "portcullis_rejected_requests", "Requests refused while parsing, by reason.", labels=["kind"]
        )
        merged_rejected: dict[str, int] = {}
        for snap in snaps:
            for kind, value in snap.get("rejected", {}).items():
                merged_rejected[kind] = merged_rejected.get(kind, 0) + value
        for kind, value in merged_rejected.items():
            rejected.add_metric([kind], value)
        yield rejected
        yield from _waf(snaps)
        yield CounterMetricFamily(
            "portcullis_connections", "Client connections accepted.",
            value=sum(s.get("connections_total", 0) for s in snaps),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "portcullis_connections_active", "Client connections open now.",
            value=sum(s.get("gauges", {}).get("connections_active", 0) for s in snaps),
        )  # fmt: skip
        pool = GaugeMetricFamily(
            "portcullis_upstream_pool_connections", "Upstream connections.", labels=["state"]
        )
        for state in ("idle", "busy"):
            pool.add_metric([state], sum(s.get("gauges", {}).get(f"pool_{state}", 0) for s in snaps))
        yield pool
        yield CounterMetricFamily("portcullis_reloads", "Successful reloads.", value=self.master["reloads"])
        yield CounterMetricFamily(
            "portcullis_reload_failures", "Reloads refused.", value=self.master["reload_failures"]
        )
        yield GaugeMetricFamily(
            "portcullis_config_generation", "Config generation.", value=self.master["generation"]
        )
        yield GaugeMetricFamily("portcullis_workers", "Worker processes.", value=self.master["workers"])


def render(snapshots: list[dict[str, Any]], master: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of the merged worker stats and the master's counters."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshots, master))
    return generate_latest(registry)
