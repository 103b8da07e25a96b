"""The WAF's response inspection, audit log and metrics through a real `portcullis run` with the
OWASP CRS, in front of a real upstream that leaks: SQL errors in a page (plain, gzipped or in br) are answered 403, held
bodies are still refused when the peer trickles them, stream mode cuts the connection instead,
the audit log holds one masked JSON line per verdict (and follows SIGUSR1), and /metrics counts
blocks and rules."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import brotli  # type: ignore[import-untyped]
import pytest
from harness import wait_until
from ops_helpers import OpsProxy, Reply, new_connection_get, ops_proxies, wait_lines

CRS = "/usr/share/modsecurity-crs"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.isdir(CRS), reason="needs Debian's modsecurity-crs"),
]

SQL_ERROR = b"You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version"
CLEAN = b"<html><body><p>all is well</p></body></html>\n"
HEADERS = {"Host": "localhost", "User-Agent": "waf-response-test", "Accept": "*/*"}
# the same rule set on every route, so the worker compiles the CRS once
USER_RULES = [
    'SecRule RESPONSE_HEADERS:X-Build "@beginsWith internal" '
    "\"id:10030,phase:3,deny,msg:'internal build header leaked'\""
]


class _Handler(BaseHTTPRequestHandler):
    """/…/page?kind=sql|clean|header, /…/trickle?kind=sql|clean (a pause between chunks),
    /…/binary, /…/gzpage?kind=sql|clean (the page gzipped), /…/brpage (the page in br): the last path segment names the
    answer, whatever route forwarded it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        kind = parse_qs(url.query).get("kind", ["clean"])[0]
        name = url.path.rstrip("/").rsplit("/", 1)[-1]
        if name == "trickle":
            self._trickle(kind)
            return
        body = CLEAN
        ctype = "text/html; charset=utf-8"
        extra: list[tuple[str, str]] = []
        if name == "binary":
            body, ctype = b"\x00\x01" + SQL_ERROR, "application/octet-stream"
        elif kind == "sql":
            body = b"<html><body>" + SQL_ERROR + b"</body></html>\n"
        elif kind == "header":
            extra.append(("X-Build", "internal-2024.1"))
        if name == "gzpage":
            body = gzip.compress(body, mtime=0)
            extra.append(("Content-Encoding", "gzip"))
        elif name == "brpage":
            body = brotli.compress(body)
            extra.append(("Content-Encoding", "br"))
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, kind: str) -> None:
        """1000 clean bytes, a pause, then the rest (with the leak) and more filler."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rest = (SQL_ERROR if kind == "sql" else b"<p>fine</p>") + b"y" * 3000
        for piece, pause in ((b"<html>" + b"x" * 994, 0.4), (rest, 0.1)):
            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(pause)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def leaky() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _waf(audit: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "waf", "crs": CRS, "rules": USER_RULES, "audit_log": str(audit), **extra}


@pytest.fixture(scope="module")
def proxy(workdir: Path, leaky: str) -> Iterator[OpsProxy]:
    audit = workdir / "waf-audit.log"
    inspect = {"response_inspection": True}
    config = {
        "workers": 1,
        "access_log": {"path": str(workdir / "waf-access.log")},
        "upstreams": {"leaky": {"peers": [{"url": leaky}]}},
        "routes": [
            {"name": "hold", "match": {"path_prefix": "/hold/"}, "filters": [_waf(audit, **inspect)],
             "upstream": "leaky"},
            {"name": "stream", "match": {"path_prefix": "/stream/"},
             "filters": [_waf(audit, **inspect, response_body_mode="stream", max_response_body="2KiB")],
             "upstream": "leaky"},
            {"name": "detect", "match": {"path_prefix": "/detect/"},
             "filters": [_waf(audit, **inspect, mode="detect")], "upstream": "leaky"},
            {"name": "plain", "match": {"path_prefix": "/"}, "filters": [_waf(audit)], "upstream": "leaky"},
        ],
    }  # fmt: skip
    with ops_proxies(workdir, "waf-response") as factory:
        yield factory(config)


def _get(proxy: OpsProxy, path: str, headers: dict[str, str] | None = None) -> Reply:
    return new_connection_get(proxy.url + path, headers={**HEADERS, **(headers or {})})


def _audit(proxy: OpsProxy, request_id: str) -> dict[str, Any]:
    """The audit line of one request (the log is flushed every quarter second)."""
    path = proxy.workdir / "waf-audit.log"
    lines = wait_lines(path, lambda ls: any(request_id in line for line in ls))
    found = [json.loads(line) for line in lines if request_id in line]
    assert len(found) == 1, lines[-5:]
    doc: dict[str, Any] = found[0]
    return doc


def test_a_leaking_page_is_answered_403(proxy: OpsProxy) -> None:
    r = _get(proxy, "/hold/page?kind=sql")
    assert r.status_code == 403
    assert b"SQL syntax" not in r.content and r.content == b"response blocked by the WAF\n"
    doc = _audit(proxy, r.headers["x-request-id"])
    assert doc["action"] == "blocked" and doc["phase"] == 4 and doc["status"] == 403 and doc["route"] == "hold"
    ids = [rule["id"] for rule in doc["rules"]]
    assert 951230 in ids and 959100 in ids
    assert doc["anomaly_score"]["outbound"] >= 4
    assert doc["decision"].startswith("waf: blocked response by 951230")

    clean = _get(proxy, "/hold/page?kind=clean")
    assert clean.status_code == 200 and clean.content == CLEAN
    assert clean.headers["content-length"] == str(len(CLEAN))  # held whole, so it has a length


@pytest.mark.parametrize(
    ("page", "coding", "compress"),
    [("gzpage", "gzip", lambda body: gzip.compress(body, mtime=0)), ("brpage", "br", brotli.compress)],
)
def test_a_compressed_leak_is_read_and_refused_and_a_clean_page_arrives_as_sent(
    proxy: OpsProxy, page: str, coding: str, compress: Any
) -> None:
    r = _get(proxy, f"/hold/{page}?kind=sql", {"Accept-Encoding": coding})
    assert r.status_code == 403
    doc = _audit(proxy, r.headers["x-request-id"])
    assert doc["phase"] == 4 and 951230 in [rule["id"] for rule in doc["rules"]]
    clean = _get(proxy, f"/hold/{page}?kind=clean", {"Accept-Encoding": coding})
    assert clean.status_code == 200 and clean.headers["content-encoding"] == coding
    assert clean.content == compress(CLEAN)  # the peer's bytes, not re-encoded


def test_a_trickled_body_is_held_and_still_refused(proxy: OpsProxy) -> None:
    began = time.monotonic()
    r = _get(proxy, "/hold/trickle?kind=sql")
    assert r.status_code == 403 and b"x" * 100 not in r.content
    assert time.monotonic() - began < 5
    ok = _get(proxy, "/hold/trickle?kind=clean")
    assert ok.status_code == 200 and ok.content.startswith(b"<html>" + b"x" * 994) and len(ok.content) == 4011


def test_a_leaking_header_is_refused_in_phase_3(proxy: OpsProxy) -> None:
    r = _get(proxy, "/hold/page?kind=header")
    assert r.status_code == 403 and "x-build" not in r.headers
    doc = _audit(proxy, r.headers["x-request-id"])
    assert doc["phase"] == 3 and [rule["id"] for rule in doc["rules"]] == [10030]


def _raw_until_closed(proxy: OpsProxy, path: str, timeout: float = 5.0) -> tuple[bytes, bool]:
    """The bytes of one response read until the proxy closes; and whether it closed in time."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        sock.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
        data = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            except TimeoutError:
                return data, False
            if not piece:
                return data, True
            data += piece
        return data, False


def test_stream_mode_cuts_the_connection_once_bytes_went_out(proxy: OpsProxy) -> None:
    data, closed = _raw_until_closed(proxy, "/stream/trickle?kind=sql")
    assert closed, "the client must not hang"
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"x" * 994 in data  # the first bytes streamed before the leak arrived
    assert b"SQL syntax" not in data and not data.endswith(b"0\r\n\r\n")  # cut: the body never ends
    request_id = data.split(b"\r\n\r\n", 1)[0].lower().split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0]
    doc = _audit(proxy, request_id.decode())
    assert doc["action"] == "connection_cut" and doc["status"] is None and doc["route"] == "stream"

    ok = _get(proxy, "/stream/trickle?kind=clean")
    assert ok.status_code == 200 and len(ok.content) == 4011


def test_what_is_not_inspected_passes(proxy: OpsProxy) -> None:
    assert _get(proxy, "/plain/page?kind=sql").status_code == 200  # no response_inspection on this route
    binary = _get(proxy, "/hold/binary")
    assert binary.status_code == 200 and SQL_ERROR in binary.content  # not a listed text type


def test_detect_mode_logs_and_lets_the_leak_through(proxy: OpsProxy) -> None:
    r = _get(proxy, "/detect/page?kind=sql")
    assert r.status_code == 200 and SQL_ERROR in r.content
    doc = _audit(proxy, r.headers["x-request-id"])
    assert doc["action"] == "detected" and doc["status"] is None and doc["phase"] == 4


def test_request_attack_audit_line_masks_secrets(proxy: OpsProxy) -> None:
    secrets = {"Authorization": "Bearer tok-SECRET-AAA", "Cookie": "session=SECRET-BBB"}
    r = _get(proxy, "/plain/login?user=bob&password=1%27%20OR%20%271%27%3D%271SECRET-CCC", secrets)
    assert r.status_code == 403
    rid = r.headers["x-request-id"]
    doc = _audit(proxy, rid)
    text = (proxy.workdir / "waf-audit.log").read_text()
    assert "SECRET" not in text
    assert doc["request_id"] == rid and doc["client"] == "127.0.0.1" and doc["method"] == "GET"
    assert doc["uri"] == "/plain/login?user=bob&password=[masked]"
    assert doc["action"] == "blocked" and doc["status"] == 403 and doc["anomaly_score"]["inbound"] >= 5
    by_id = {rule["id"]: rule for rule in doc["rules"]}
    assert 949110 in by_id and any(rule["var"] == "ARGS:password" for rule in doc["rules"])
    assert all(rule["data"] == "[masked]" for rule in doc["rules"] if rule["var"] == "ARGS:password")
    # the access log's decision names the same verdict
    access = wait_lines(proxy.workdir / "waf-access.log", lambda ls: any(rid in line for line in ls))
    [line] = [json.loads(line) for line in access if rid in line]
    assert line["status"] == 403 and line["decision"].startswith("waf: blocked by 94")


def _value(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_count_blocks_and_rules(proxy: OpsProxy) -> None:
    before = proxy.metrics()
    assert _get(proxy, "/plain/search?q=1%27%20OR%20%271%27%3D%271").status_code == 403
    assert _get(proxy, "/hold/page?kind=sql").status_code == 403
    assert _get(proxy, "/detect/page?kind=sql").status_code == 200
    after = proxy.metrics()
    blocked, matches = "portcullis_waf_blocked_total", "portcullis_waf_rule_matches_total"
    assert _value(after, blocked, route="plain") - _value(before, blocked, route="plain") == 1
    assert _value(after, blocked, route="hold") - _value(before, blocked, route="hold") == 1
    detected = "portcullis_waf_detected_total"
    assert _value(after, detected, route="detect") - _value(before, detected, route="detect") == 1
    assert _value(after, matches, route="plain", rule="942100") - _value(before, matches, route="plain", rule="942100")
    assert _value(after, matches, route="plain", rule="949110") - _value(before, matches, route="plain", rule="949110")
    assert _value(after, matches, route="hold", rule="951230") - _value(before, matches, route="hold", rule="951230")


def test_sigusr1_reopens_the_audit_log(proxy: OpsProxy) -> None:
    path = proxy.workdir / "waf-audit.log"
    first = _get(proxy, "/hold/page?kind=sql").headers["x-request-id"]
    _audit(proxy, first)
    rotated = path.with_name("waf-audit.log.1")
    os.replace(path, rotated)
    proxy.signal(signal.SIGUSR1)
    assert wait_until(path.exists, 5), "SIGUSR1 did not reopen the audit log"
    second = _get(proxy, "/hold/page?kind=sql").headers["x-request-id"]
    doc = _audit(proxy, second)
    assert doc["request_id"] == second
    assert first in rotated.read_text() and first not in path.read_text()
