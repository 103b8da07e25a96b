"""/metrics: valid Prometheus text, counters merged over two workers that equal what was sent."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Upstream, wait_until
from ops_helpers import OpsProxyFactory, new_connection_get, ops_config, ops_proxies, respond_route

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "ops-metrics") as f:
        yield f


def _labels(**kv: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kv.items()))


def test_metrics_count_exactly_what_was_sent(
    factory: OpsProxyFactory, make_upstream: Callable[[str], Upstream]
) -> None:
    up1, up2 = make_upstream("m1"), make_upstream("m2")
    proxy = factory(
        ops_config(up1, up2, workers=2, routes=[
            respond_route("hello", "/hello", "hi\n"),
            {"name": "metered", "match": {"path_prefix": "/echo/"}, "upstream": "main"},
        ])
    )  # fmt: skip
    baseline = proxy.metrics()
    connections_before = baseline["portcullis_connections_total"][()]

    def one(i: int) -> tuple[int, str]:
        if i < 60:
            r = new_connection_get(f"{proxy.url}/echo/get/{i}")
        elif i < 70:
            r = new_connection_get(f"{proxy.url}/echo/post/{i}", method="POST", body=b"x" * i)
        elif i < 77:
            r = new_connection_get(f"{proxy.url}/hello")
        else:
            r = new_connection_get(f"{proxy.url}/nope/{i}")
        return r.status_code, r.headers["x-request-id"][:12]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(80)))
    assert [status for status, _ in results] == [200] * 77 + [404] * 3
    assert len({prefix for _, prefix in results}) == 2, "expected both workers to answer (so /metrics must merge)"

    assert wait_until(lambda: proxy.metrics()["portcullis_connections_active"][()] == 0, 3)
    m = proxy.metrics()
    requests = m["portcullis_requests_total"]
    assert requests[_labels(route="metered", method="GET", status_class="2xx")] == 60
    assert requests[_labels(route="metered", method="POST", status_class="2xx")] == 10
    assert requests[_labels(route="hello", method="GET", status_class="2xx")] == 7
    assert sum(v for k, v in requests.items() if ("status_class", "4xx") in k) == 3
    assert sum(requests.values()) == 80, requests

    # the duration histogram of the route counts the same requests, with cumulative buckets
    assert m["portcullis_request_duration_seconds_count"][_labels(route="metered")] == 70
    assert m["portcullis_request_duration_seconds_sum"][_labels(route="metered")] > 0
    buckets = sorted(
        (float(dict(k)["le"]), v) for k, v in m["portcullis_request_duration_seconds_bucket"].items()
        if dict(k)["route"] == "metered"
    )  # fmt: skip
    assert buckets[-1] == (float("inf"), 70)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets)), buckets
    assert m["portcullis_request_duration_seconds_count"][_labels(route="hello")] == 7

    # upstream attempts per peer: what each upstream itself received
    attempts = m["portcullis_upstream_attempts_total"]
    for up in (up1, up2):
        peer = f"127.0.0.1:{up.port}"
        received = up.stats()["requests"]
        assert received > 0, "round robin never picked this peer"
        assert attempts[_labels(upstream="main", peer=peer)] == received
        assert m["portcullis_upstream_response_seconds_count"][_labels(upstream="main", peer=peer)] == received
    assert sum(attempts.values()) == 70
    assert not m.get("portcullis_upstream_failures_total"), m.get("portcullis_upstream_failures_total")

    assert 80 <= m["portcullis_connections_total"][()] - connections_before <= 81
    assert m["portcullis_workers"][()] == 2
    assert m["portcullis_config_generation"][()] == 1
    assert m["portcullis_reloads_total"][()] == 0
    assert m["portcullis_reload_failures_total"][()] == 0
    pool = m["portcullis_upstream_pool_connections"]
    assert pool[_labels(state="busy")] == 0 and pool[_labels(state="idle")] >= 1, pool

    # statistics survive a reload
    r = proxy.reload_api()
    assert r.status_code == 200, r.text
    after = proxy.metrics()
    assert after["portcullis_requests_total"] == requests
    assert after["portcullis_upstream_attempts_total"] == attempts
    assert after["portcullis_config_generation"][()] == 2 and after["portcullis_reloads_total"][()] == 1
