"""The access log file: JSON lines that match the requests, the combined format, SIGUSR1 after logrotate
moved the file, and lines of requests that were in flight during a reload."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Upstream, wait_until
from ops_helpers import (
    OpsProxy,
    OpsProxyFactory,
    Reply,
    new_connection_get,
    ops_config,
    ops_proxies,
    read_lines,
    respond_route,
    wait_lines,
)

pytestmark = pytest.mark.integration

AGENT = "ops-test-agent/1.0"


@pytest.fixture(scope="module")
def l_upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("alog")


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "ops-alog") as f:
        yield f


def _config(up: Upstream, log: Path, fmt: str, workers: int) -> dict[str, Any]:
    return ops_config(
        up,
        workers=workers,
        access_log={"path": str(log), "format": fmt},
        routes=[
            respond_route("hello", "/hello", "hello\n"),
            {"name": "backend", "match": {"path_regex": "^/(echo|upload|slow-head|status)(/|$)"}, "upstream": "main"},
        ],
    )


def _json_lines(lines: list[str]) -> list[dict[str, Any]]:
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line, whole: a torn or interleaved line fails here
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def _ids_in(lines: list[str]) -> set[str]:
    """The request ids of the lines (while polling: a line being written may be incomplete)."""
    out = set()
    for line in lines:
        with contextlib.suppress(ValueError):
            out.add(json.loads(line).get("request_id"))
    return out


def _has_ids(ids: set[str], start: int = 0) -> Callable[[list[str]], bool]:
    return lambda lines: ids <= _ids_in(lines[start:])


@pytest.fixture(scope="module")
def json_proxy(factory: OpsProxyFactory, l_upstream: Upstream, workdir: Path) -> tuple[OpsProxy, Path]:
    """Two workers writing one JSON access log; shared by the tests below, each reading only its own lines."""
    log = workdir / "alog-json.log"
    return factory(_config(l_upstream, log, "json", workers=2)), log


def test_json_lines_match_the_requests(json_proxy: tuple[OpsProxy, Path], l_upstream: Upstream) -> None:
    proxy, log = json_proxy
    start = len(read_lines(log))
    sent: list[tuple[str, str, str, str, int, Reply, dict[str, Any]]] = []
    # (method, path, query, route, status, reply, extra expectations)
    for i in range(30):
        kind = i % 5
        headers = {"User-Agent": AGENT}
        if kind == 0:
            r = new_connection_get(f"{proxy.url}/echo/{i}?n={i}", headers=headers)
            sent.append(("GET", f"/echo/{i}", f"n={i}", "backend", 200, r, {}))
        elif kind == 1:
            body = b"b" * (100 + i)
            r = new_connection_get(f"{proxy.url}/upload", method="POST", body=body, headers=headers)
            sent.append(("POST", "/upload", "", "backend", 200, r, {"bytes_in": len(body)}))
        elif kind == 2:
            r = new_connection_get(f"{proxy.url}/hello", headers=headers)
            sent.append(("GET", "/hello", "", "hello", 200, r, {"upstream_peer": None, "bytes_out": 6}))
        elif kind == 3:
            r = new_connection_get(f"{proxy.url}/nowhere/{i}", headers=headers)
            sent.append(("GET", f"/nowhere/{i}", "", "", 404, r, {"route": None, "upstream_peer": None}))
        else:
            r = new_connection_get(f"{proxy.url}/status/503", headers=headers)
            sent.append(("GET", "/status/503", "", "backend", 503, r, {}))
        assert r.status_code == sent[-1][4], (sent[-1][:2], r.status_code, r.text)

    ids = {s[5].headers["x-request-id"] for s in sent}
    assert len(ids) == 30
    lines = wait_lines(log, _has_ids(ids, start), timeout=3.0)
    docs = _json_lines(lines)[start:]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_id.setdefault(doc["request_id"], []).append(doc)
    missing = ids - set(by_id)
    assert not missing, f"{len(missing)} requests not logged; the log has {len(docs)} lines"
    assert len(docs) == 30, f"lines for requests nobody sent: {[d for d in docs if d['request_id'] not in ids]}"
    peer = f"127.0.0.1:{l_upstream.port}"
    for method, path, query, route, status, reply, extra in sent:
        [doc] = by_id[reply.headers["x-request-id"]]
        expected = {
            "method": method, "path": path, "query": query, "status": status, "route": route,
            "upstream_peer": peer, "user_agent": AGENT, "protocol": "HTTP/1.1", "client": "127.0.0.1",
            "host": "127.0.0.1", "bytes_out": len(reply.content), **extra,
        }  # fmt: skip
        got = {k: doc.get(k) for k in expected}
        assert got == expected, doc
        assert isinstance(doc["total_time"], float) and 0 <= doc["total_time"] < 5, doc
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", doc["time"]), doc["time"]
        if route == "backend":
            assert isinstance(doc["upstream_time"], float) and 0 <= doc["upstream_time"] <= doc["total_time"], doc
        if status == 404:
            assert doc["error"], doc
    # both workers wrote to the one file
    assert len({d["request_id"][:12] for d in docs}) == 2, "expected lines from both workers"


_COMBINED = re.compile(
    r"^(?P<client>\S+) - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<proto>HTTP/1\.[01])" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


def test_combined_format(factory: OpsProxyFactory, l_upstream: Upstream, workdir: Path) -> None:
    log = workdir / "alog-combined.log"
    proxy = factory(_config(l_upstream, log, "combined", workers=1))
    replies = [
        new_connection_get(f"{proxy.url}/echo/c?q=1", headers={"User-Agent": AGENT, "Referer": "http://ref.test/"}),
        new_connection_get(f"{proxy.url}/hello"),
        new_connection_get(f"{proxy.url}/nowhere"),
    ]
    assert [r.status_code for r in replies] == [200, 200, 404]
    lines = wait_lines(log, lambda lines: len(lines) >= 3, timeout=3.0)
    assert len(lines) == 3, lines
    parsed = []
    for line in lines:
        m = _COMBINED.match(line)
        assert m is not None, f"not combined format: {line!r}"
        parsed.append(m.groupdict())
    first, second, third = parsed
    assert first["client"] == "127.0.0.1" and first["method"] == "GET" and first["target"] == "/echo/c?q=1"
    assert first["proto"] == "HTTP/1.1" and first["status"] == "200"
    assert int(first["bytes"]) == len(replies[0].content)
    assert first["referer"] == "http://ref.test/" and first["agent"] == AGENT
    assert second["target"] == "/hello" and second["status"] == "200" and second["bytes"] == "6"
    assert second["referer"] == "-"
    assert third["target"] == "/nowhere" and third["status"] == "404"


def test_sigusr1_reopens_the_file_after_logrotate(json_proxy: tuple[OpsProxy, Path]) -> None:
    proxy, log = json_proxy
    rotated = log.with_name(log.name + ".1")
    start = len(read_lines(log))

    def send(tag: str, n: int) -> set[str]:
        ids = set()
        for i in range(n):
            r = new_connection_get(f"{proxy.url}/echo/{tag}/{i}")
            assert r.status_code == 200
            ids.add(r.headers["x-request-id"])
        return ids

    before = send("before", 20)
    wait_lines(log, _has_ids(before, start), timeout=3.0)
    os.rename(log, rotated)  # what logrotate does, then it signals the master
    moved = send("moved", 20)  # still written to the open (renamed) file
    proxy.signal(signal.SIGUSR1)
    time.sleep(0.3)  # the signal is asynchronous; give both workers a moment to reopen
    after = send("after", 40)
    new_lines = wait_lines(log, _has_ids(after), timeout=3.0)
    assert log.exists(), "SIGUSR1 did not create a new log file"
    new_docs = _json_lines(new_lines)
    assert {d["request_id"] for d in new_docs} == after, "the new file has other lines than those sent after"
    assert len({d["request_id"][:12] for d in new_docs}) == 2, "both workers must reopen"
    old_docs = _json_lines(read_lines(rotated))[start:]
    assert {d["request_id"] for d in old_docs} == before | moved
    assert all(d["path"].startswith(("/echo/before/", "/echo/moved/")) for d in old_docs)
    assert proxy.alive()


def test_requests_in_flight_during_a_reload_are_logged(json_proxy: tuple[OpsProxy, Path], l_upstream: Upstream) -> None:
    proxy, log = json_proxy
    target = "/slow-head/1.0?in-flight"
    result: list[Reply] = []
    slow = threading.Thread(target=lambda: result.append(new_connection_get(f"{proxy.url}{target}")))
    slow.start()
    assert wait_until(lambda: any(e.get("target") == target for e in l_upstream.log()), 3), (
        "the slow request did not reach the upstream"
    )

    def change(cfg: dict[str, Any]) -> None:
        cfg["routes"].insert(0, respond_route("late", "/late", "late\n"))

    proxy.rewrite(change)
    proxy.reload_signal(proxy.status()["generation"] + 1)
    slow.join(10)
    assert result and result[0].status_code == 200 and result[0].text == "slow head\n"
    late = new_connection_get(f"{proxy.url}/late")
    assert late.status_code == 200 and late.text == "late\n"
    ids = {result[0].headers["x-request-id"], late.headers["x-request-id"]}
    lines = wait_lines(log, _has_ids(ids), timeout=3.0)
    logged = {d["request_id"]: d for d in _json_lines(lines)}
    assert late.headers["x-request-id"] in logged, "a request of the new generation is not logged"
    assert result[0].headers["x-request-id"] in logged, (
        "the request in flight during the reload finished on the old runtime, but its access log line is lost"
    )
    assert logged[result[0].headers["x-request-id"]]["status"] == 200
