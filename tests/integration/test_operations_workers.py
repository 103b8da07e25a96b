"""Master and workers: two workers both serve, and a worker killed with SIGKILL is replaced at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Upstream, wait_until
from ops_helpers import OpsProxy, OpsProxyFactory, child_pids, new_connection_get, ops_config, ops_proxies, pid_alive

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def w_upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("workers")


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "ops-workers") as f:
        yield f


@pytest.fixture(scope="module")
def two_workers(factory: OpsProxyFactory, w_upstream: Upstream) -> OpsProxy:
    return factory(ops_config(w_upstream, workers=2))


def _prefixes(proxy: OpsProxy, n: int, threads: int = 4) -> dict[str, int]:
    """Request ids of `n` requests, each on a new connection: how many per worker (per 12-hex prefix)."""

    def one(i: int) -> str:
        r = new_connection_get(f"{proxy.url}/echo/{i}")
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        assert len(rid) == 22 and all(c in "0123456789abcdef" for c in rid), rid
        return rid[:12]

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(threads) as pool:
        for prefix in pool.map(one, range(n)):
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def test_two_workers_are_listed_and_both_serve(two_workers: OpsProxy) -> None:
    status = two_workers.status()
    pids = [w["pid"] for w in status["workers"]]
    assert len(pids) == 2 and len(set(pids)) == 2, status
    assert all(w["generation"] == status["generation"] == 1 for w in status["workers"]), status
    # they are the master's children, alive
    assert set(pids) <= child_pids(two_workers.pid), (pids, child_pids(two_workers.pid))
    counts = _prefixes(two_workers, 200)
    assert sum(counts.values()) == 200
    # one request-id prefix per worker process: both workers answered
    assert len(counts) == 2, counts
    assert min(counts.values()) >= 5, f"one worker barely serves: {counts}"
    metrics = two_workers.metrics()
    assert metrics["portcullis_workers"][()] == 2


def test_killed_worker_is_replaced_and_the_listener_keeps_serving(two_workers: OpsProxy) -> None:
    before = two_workers.worker_pids()
    victim, survivor = before
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    replacement: list[int] = []

    def replaced() -> bool:
        pids = two_workers.worker_pids()
        fresh = [p for p in pids if isinstance(p, int) and p not in before]
        replacement[:] = fresh
        return len(pids) == 2 and survivor in pids and victim not in pids and len(fresh) == 1

    assert wait_until(replaced, 1.0, 0.01), f"no replacement listed within 1 s: {two_workers.status()}"
    took = time.monotonic() - killed_at
    # the listener is the master's: new connections are answered at once (by the survivor, or the replacement)
    for i in range(20):
        r = new_connection_get(f"{two_workers.url}/echo/after-kill/{i}")
        assert r.status_code == 200, r.text
    new_pid = replacement[0]
    assert pid_alive(new_pid) and not pid_alive(victim)
    assert new_pid in child_pids(two_workers.pid)

    # the replacement becomes ready on the current generation, then it serves too
    assert wait_until(lambda: all(w["generation"] == 1 for w in two_workers.status()["workers"]), 10), (
        two_workers.status()
    )
    assert wait_until(lambda: two_workers.admin("GET", "/readyz").status_code == 200, 5)
    counts = _prefixes(two_workers, 100)
    assert sum(counts.values()) == 100
    assert len(counts) == 2, f"the replacement worker does not serve: {counts}"

    # the master says why
    exit_event = two_workers.wait_event("worker_exit", 3, worker_pid=victim)
    assert exit_event is not None, two_workers.stderr()[-3000:]
    assert exit_event["returncode"] == -signal.SIGKILL
    assert exit_event["process"] == "master" and exit_event["pid"] == two_workers.pid
    assert exit_event["level"] == "warning"
    print(f"replacement pid listed {took:.3f}s after SIGKILL")


def test_a_replacement_that_refuses_the_config_is_retried_with_growing_pauses(
    factory: OpsProxyFactory, w_upstream: Upstream, tmp_path: Path
) -> None:
    """A worker dies after a file of the config broke: its replacements refuse the config, the
    master logs why and retries after 0.5, 1, 2 ... s (not in a tight loop), the other worker
    serves all along, and once the file is mended the next retry serves again."""
    rules = tmp_path / "site-rules.conf"
    good = 'SecRule ARGS:probe "@streq attack" "id:7001,phase:2,deny"\n'
    rules.write_text(good)
    waf_route = {"name": "backend", "match": {"path_prefix": "/"}, "upstream": "main",
                 "filters": [{"type": "waf", "rule_files": [str(rules)]}]}  # fmt: skip
    proxy = factory(ops_config(w_upstream, workers=2, routes=[waf_route]))
    victim, survivor = proxy.worker_pids()
    rules.write_text(good.replace("deny", "dney"))  # the master's config now names a broken file
    os.kill(victim, signal.SIGKILL)

    def refusals() -> list[dict[str, object]]:
        return [e for e in proxy.events() if e.get("event") == "worker_exit" and e.get("error")]

    assert wait_until(lambda: len(refusals()) >= 2, 10), proxy.stderr()[-3000:]
    first, second = refusals()[:2]
    assert "unknown action 'dney'" in str(first["error"]) and str(rules) in str(first["error"])
    assert "refusing the configuration" in str(first["message"])
    assert (first["retry_in"], second["retry_in"]) == (0.5, 1.0)
    for i in range(10):  # the survivor serves meanwhile, with the config it started with
        assert new_connection_get(f"{proxy.url}/echo/meanwhile/{i}").status_code == 200
    assert new_connection_get(f"{proxy.url}/echo/x?probe=attack").status_code == 403
    assert survivor in proxy.worker_pids()

    rules.write_text(good)
    assert wait_until(lambda: all(isinstance(p, int) and pid_alive(p) for p in proxy.worker_pids())
                      and proxy.status()["workers"][0]["generation"] == 1
                      and all(w["generation"] == 1 for w in proxy.status()["workers"]), 10), proxy.status()
    counts = _prefixes(proxy, 100)
    assert len(counts) == 2, f"the mended replacement does not serve: {counts}"
    retries = len(refusals())
    assert retries <= 4, f"{retries} refused starts in about 4 s: not backing off"
