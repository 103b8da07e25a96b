"""Worker stats merge into Prometheus text that parses; access log lines carry the request."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from portcullis.admin.api import redact
from portcullis.engine.context import RequestContext
from portcullis.engine.errors import ErrorKind, ProxyError
from portcullis.observability.access_log import combined_line, json_line
from portcullis.observability.metrics import render
from portcullis.observability.stats import BUCKETS, WorkerStats


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _worker(requests: int, status: int, seconds: float) -> WorkerStats:
    stats = WorkerStats()
    for _ in range(requests):
        stats.request("api", "GET", status, seconds)
        peer = stats.peer("app", "127.0.0.1:9001")
        peer.attempts += 1
        peer.durations.observe(seconds / 2)
    stats.upstream_failure("app", "127.0.0.1:9001", "connect_failed")
    stats.connections_total = requests
    return stats


def test_counters_from_several_workers_are_summed() -> None:
    a, b = _worker(3, 200, 0.004), _worker(4, 200, 0.2)
    snaps = [a.snapshot({"connections_active": 1}), b.snapshot({"connections_active": 2})]
    samples = _samples(render(snaps, {"reloads": 2, "reload_failures": 1, "generation": 3, "workers": 2}))
    key = ("portcullis_requests_total", (("method", "GET"), ("route", "api"), ("status_class", "2xx")))
    assert samples[key] == 7
    assert samples[("portcullis_request_duration_seconds_count", (("route", "api"),))] == 7
    # 3 requests of 4 ms fall in the 5 ms bucket, the 4 of 200 ms only from the 250 ms bucket on
    assert samples[("portcullis_request_duration_seconds_bucket", (("le", "0.005"), ("route", "api")))] == 3
    assert samples[("portcullis_request_duration_seconds_bucket", (("le", "0.25"), ("route", "api")))] == 7
    peer = (("peer", "127.0.0.1:9001"), ("upstream", "app"))
    assert samples[("portcullis_upstream_attempts_total", peer)] == 7
    assert samples[("portcullis_upstream_failures_total", (("kind", "connect_failed"), *peer))] == 2
    assert samples[("portcullis_connections_active", ())] == 3
    assert samples[("portcullis_reload_failures_total", ())] == 1
    assert samples[("portcullis_workers", ())] == 2


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    stats = WorkerStats()
    for seconds in (0.0005, 0.03, 100.0):
        stats.request("r", "POST", 500, seconds)
    master = {"reloads": 0, "reload_failures": 0, "generation": 1, "workers": 1}
    samples = _samples(render([stats.snapshot({})], master))
    name = "portcullis_request_duration_seconds_bucket"
    buckets = [samples[(name, (("le", repr(b)), ("route", "r")))] for b in BUCKETS]
    assert buckets == sorted(buckets)
    assert samples[("portcullis_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "r")))] == 3
    assert buckets[-1] == 2  # 100 s is beyond the last finite bucket


def _ctx() -> RequestContext:
    ctx = RequestContext(
        "GET", b"/a/b?x=1", [(b"Host", b"shop.example"), (b"User-Agent", b"curl/8")], "1.1", "shop.example",
        "192.0.2.7", 5555, "http", "web", 0.0,
    )  # fmt: skip
    ctx.request_id = "abc123"
    ctx.status = 502
    ctx.bytes_out = 42
    ctx.peer = "127.0.0.1:9001"
    ctx.error = ProxyError(ErrorKind.CONNECT_FAILED, "cannot connect")
    ctx.decision = "connect_failed: cannot connect"
    return ctx


def test_json_access_line() -> None:
    doc = json.loads(json_line(_ctx(), 0.0123))
    assert doc["request_id"] == "abc123"
    assert (doc["method"], doc["host"], doc["path"], doc["query"]) == ("GET", "shop.example", "/a/b", "x=1")
    assert (doc["status"], doc["bytes_out"], doc["client"]) == (502, 42, "192.0.2.7")
    assert doc["upstream_peer"] == "127.0.0.1:9001"
    assert doc["user_agent"] == "curl/8"
    assert doc["total_time"] == 0.0123
    assert doc["decision"] == "connect_failed: cannot connect"
    assert doc["error"] == "cannot connect"


def test_combined_access_line() -> None:
    line = combined_line(_ctx(), 0.01)
    assert line.startswith('192.0.2.7 - - [')
    assert '"GET /a/b?x=1 HTTP/1.1" 502 42 "-" "curl/8"' in line
    assert line.endswith("\n")


def test_redact_hides_tokens_but_keeps_key_paths() -> None:
    doc = {"admin": {"token": "s3cret", "listen": "127.0.0.1:9901"},
           "listeners": [{"tls": {"certificates": [{"cert": "a.pem", "key": "a.key"}]}}],
           "auth": {"client_secret": "x", "password": "y"}}  # fmt: skip
    out = redact(doc)
    assert out["admin"] == {"token": "***", "listen": "127.0.0.1:9901"}
    assert out["listeners"][0]["tls"]["certificates"][0] == {"cert": "a.pem", "key": "a.key"}
    assert out["auth"] == {"client_secret": "***", "password": "***"}


def test_waf_counters_merge_by_route_and_rule() -> None:
    a, b = WorkerStats(), WorkerStats()
    for stats in (a, b):
        stats.waf_match("site", 942100)
        stats.waf_match("site", 949110)
        stats.waf_verdict("site", blocked=True)
    b.waf_match("api", 951230)
    b.waf_verdict("api", blocked=False)
    master = {"reloads": 0, "reload_failures": 0, "generation": 1, "workers": 2}
    samples = _samples(render([a.snapshot({}), b.snapshot({})], master))
    assert samples[("portcullis_waf_rule_matches_total", (("route", "site"), ("rule", "942100")))] == 2
    assert samples[("portcullis_waf_rule_matches_total", (("route", "api"), ("rule", "951230")))] == 1
    assert samples[("portcullis_waf_blocked_total", (("route", "site"),))] == 2
    assert samples[("portcullis_waf_detected_total", (("route", "api"),))] == 1
    assert ("portcullis_waf_blocked_total", (("route", "api"),)) not in samples
