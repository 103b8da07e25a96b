"""The integration harness: the test upstream and `portcullis run` as subprocesses, configs, raw sockets.

Every process started here is stopped by the fixtures in conftest.py, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = ROOT / "tests" / "servers" / "upstream.py"

_spec = importlib.util.spec_from_file_location("portcullis_test_upstream", UPSTREAM_SCRIPT)
assert _spec is not None and _spec.loader is not None
upstream_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(upstream_server)
pattern_chunks = upstream_server.pattern_chunks
pattern_sha256 = upstream_server.pattern_sha256

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


# =========================================================================== small helpers

def free_port() -> int:
    """A loopback port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_on(port: int) -> int:
    """How many sockets the kernel lists as listening on 127.0.0.1:`port` (a listener's shards)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for row in table if row.split()[1:2] == [local] and row.split()[3] == "0A")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the proxy's workers), found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a process we started (in its own session) and everything it started, by their ids."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    # workers left behind by a master that died: same process group, which is the master's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_kb(pid: int) -> dict[int, int]:
    """VmRSS of `pid` and of each of its descendants (the master and its workers)."""
    out = {}
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            out[p] = rss_kb(p)
    return out


class RssSampler:
    """Samples the VmRSS of a process and its children in a thread while a transfer runs:
    `with RssSampler(pid) as s: ...`; `s.max_kb` is the largest any one process reached."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[dict[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pids = [pid, *_descendants(pid)]

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = {}
            for p in self._pids:
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    sample[p] = rss_kb(p)
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_kb(self) -> int:
        """The largest VmRSS any one process of the tree had in any sample."""
        return max((max(s.values()) for s in self.samples if s), default=0)

    @property
    def max_total_kb(self) -> int:
        return max((sum(s.values()) for s in self.samples if s), default=0)


# =========================================================================== upstream server

class Upstream:
    """tests/servers/upstream.py running as a subprocess."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"upstream-{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", "0", "--name", name],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            info = json.loads(self._read_line(START_TIMEOUT))
        except Exception:
            self.stop()
            raise
        self.port: int = info["port"]
        self.ws_port: int | None = info["ws_port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError(f"upstream {self.name} did not start in {timeout}s")
        finally:
            sel.close()
        line = self.proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"upstream {self.name} exited: {self.log_path.read_text()}")
        return line

    def _get(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            return json.loads(resp.read())
        finally:
            conn.close()

    def stats(self) -> dict[str, int]:
        """Counters, read straight from the upstream (not through the proxy, not counted in them)."""
        stats: dict[str, int] = self._get("/stats")
        return stats

    def log(self) -> list[dict[str, Any]]:
        """The requests the upstream received, oldest first (at most the last 500)."""
        entries: list[dict[str, Any]] = self._get("/log")
        return entries

    def log_since(self, before: dict[str, int]) -> list[dict[str, Any]]:
        """The requests received since `before` (a `stats()` result)."""
        return [e for e in self.log() if e.get("seq", -1) > before["requests"]]

    def stop(self) -> None:
        _stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# =========================================================================== the proxy

class Proxy:
    """`python3 -m portcullis run -c cfg.yaml` as a subprocess, on a free loopback port."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.name = name
        self.workdir = workdir
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            cfg = dict(config)
            # the one listener, on the free port; a config may give its other keys
            given = (config.get("listeners") or [{}])[0]
            cfg["listeners"] = [{**given, "name": "web", "listen": f"127.0.0.1:{self.port}"}]
            self.config_path = workdir / f"{name}.yaml"
            # JSON is YAML: the config file is the dict, dumped
            self.config_path.write_text(json.dumps(cfg, indent=2))
            self.log_path = workdir / f"{name}.log"
            self._log = open(self.log_path, "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "portcullis", "run", "-c", str(self.config_path)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,  # its own process group, so its workers can be reaped
            )
            if self._wait_ready(START_TIMEOUT):
                break
            self.stop()
            last_error = self.log_path.read_text()
            if "cannot listen" not in last_error:
                raise RuntimeError(f"portcullis {name} did not start:\n{last_error}")
        else:
            raise RuntimeError(f"portcullis {name} did not start:\n{last_error}")
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> bool:
        """Ready when it answers HTTP (the master may accept before its workers serve). The probe
        lacks a Host, so the proxy answers 400 itself and no upstream sees it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"GET /__portcullis_ready HTTP/1.1\r\n\r\n")
                    if s.recv(16).startswith(b"HTTP/1.1 "):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def rss_kb(self) -> int:
        """The largest VmRSS among the master and its workers."""
        return max(tree_rss_kb(self.pid).values())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop_process(self.proc)
        self._log.close()


def base_config(up: Upstream, **server: Any) -> dict[str, Any]:
    """One catch-all route to `up`."""
    return {
        "workers": 1,
        "server": server,
        "upstreams": {"main": {"peers": [{"url": up.url}]}},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "main"}],
    }


_BACKEND_PATHS = (
    r"^/(echo|size|chunked|stream|slow-head|slow-body|close|reset|garbage|truncate|status|upload|slow-upload"
    r"|rheaders)(/|$)"
)


def _route(name: str, match: dict[str, Any], upstream: str | None = "main", **extra: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": name, "match": match}
    if upstream is not None:
        route["upstream"] = upstream
    route.update(extra)
    return route


def _tag(name: str) -> dict[str, Any]:
    """A filter that tells the upstream which route forwarded the request."""
    return {"type": "headers", "request": {"set": {"X-Route": name}}}


def main_config(up: Upstream, dead_port: int) -> dict[str, Any]:
    """The config most tests share: every routing case, filters, limits, a WebSocket and a dead upstream."""
    return {
        "workers": 1,
        "server": {"timeouts": {"client_header": "10s", "client_body": "10s", "keepalive": "60s"}},
        "upstreams": {
            "main": {"peers": [{"url": up.url}]},
            "ws": {"peers": [{"url": f"http://127.0.0.1:{up.ws_port}"}]},
            "dead": {"peers": [{"url": f"http://127.0.0.1:{dead_port}"}], "timeouts": {"connect": "1s"}},
        },
        "routes": [
            _route("fixed", {"path": "/fixed"}, None, filters=[
                {"type": "respond", "status": 200, "body": "fixed body\n", "headers": {"X-Fixed": "yes"}}]),
            _route("teapot", {"path": "/teapot"}, None, filters=[
                {"type": "respond", "status": 418, "body": "short and stout", "content_type": "text/x-teapot"}]),
            _route("moved", {"path_prefix": "/old/"}, None, filters=[
                {"type": "redirect", "to": "https://new.example/new$path", "status": 301}]),
            _route("goto", {"path": "/goto"}, None, filters=[
                {"type": "redirect", "to": "/target?from=$query"}]),
            _route("host-exact", {"host": "exact.test", "path_prefix": "/"}, filters=[_tag("host-exact")]),
            _route("host-wild", {"host": "*.wild.test", "path_prefix": "/"}, filters=[_tag("host-wild")]),
            _route("path-exact", {"path": "/echo/exact"}, filters=[_tag("path-exact")]),
            _route("path-regex", {"path_regex": "^/echo/re/[0-9]+$"}, filters=[_tag("path-regex")]),
            _route("methods", {"path_prefix": "/echo/methods", "methods": ["post", "PUT"]}, filters=[_tag("methods")]),
            _route("only-post", {"path_prefix": "/only-post/", "methods": ["POST"]},
                   filters=[_tag("only-post"), {"type": "rewrite", "strip_prefix": "/only-post"}]),
            _route("hdr-exact", {"path_prefix": "/echo/hdr", "headers": {"X-Env": "canary"}},
                   filters=[_tag("hdr-exact")]),
            _route("hdr-present", {"path_prefix": "/echo/hdr", "headers": {"X-Flag": "*"}},
                   filters=[_tag("hdr-present")]),
            _route("order-first", {"path_prefix": "/echo/order"}, filters=[_tag("order-first")]),
            _route("order-second", {"path": "/echo/order/specific"}, filters=[_tag("order-second")]),
            _route("strip", {"path_prefix": "/strip/"}, filters=[{"type": "rewrite", "strip_prefix": "/strip"}]),
            _route("rx", {"path_prefix": "/rx/"}, filters=[
                {"type": "rewrite", "regex": r"^/rx/(\w+)/(\w+)$", "replace": "/echo/$2/$1"}]),
            _route("hdrs", {"path_prefix": "/hdrs/"}, filters=[
                {"type": "rewrite", "strip_prefix": "/hdrs"},
                {"type": "headers",
                 "request": {"set": {"X-Set": "one", "X-Overwrite": "new"}, "add": {"X-Add": "two"},
                             "remove": ["X-Remove-Me"]},
                 "response": {"set": {"X-Resp-Set": "yes"}, "add": {"X-Resp-Add": "a"}, "remove": ["X-Upstream"]}},
            ]),
            _route("limited", {"path_prefix": "/limited/"}, filters=[{"type": "rewrite", "strip_prefix": "/limited"}],
                   limits={"max_body": "1KiB"}),
            _route("ws", {"path": "/ws"}, "ws"),
            _route("dead", {"path_prefix": "/dead/"}, "dead"),
            _route("backend", {"path_regex": _BACKEND_PATHS}),
        ],
    }  # fmt: skip


# =========================================================================== raw HTTP/1.1 on a socket

class RawResponse:
    def __init__(self, status: int, reason: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.body = b""
        self.trailers: list[tuple[str, str]] = []
        self.chunked = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers!r} body={self.body[:200]!r}>"


class ConnectionClosed(Exception):
    """The peer closed the connection before a whole response arrived."""


class RawConnection:
    """A plain TCP connection: send exact bytes, read responses with deadlines."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        """Read more bytes into the buffer; ConnectionClosed at EOF (or reset), TimeoutError at the deadline."""
        if self.eof:
            raise ConnectionClosed(bytes(self.buf))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response in time; got {bytes(self.buf[:500])!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError(f"no complete response in time; got {bytes(self.buf[:500])!r}") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise ConnectionClosed(bytes(self.buf))
        self.buf += data

    def _read_line(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self._fill(deadline)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_response(self, method: str = "GET", timeout: float | None = None) -> RawResponse:
        """One response (an interim 1xx counts as one). HEAD, 1xx, 204 and 304 have no body."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            self._fill(deadline)
        head = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[: i + 4]
        lines = head.split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        resp = RawResponse(int(status), reason[0] if reason else "", version, headers)
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return resp
        te = resp.header("transfer-encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            resp.chunked = True
            body = bytearray()
            while True:
                size = int(self._read_line(deadline).split(b";")[0], 16)
                if size == 0:
                    break
                body += self._read_exact(size, deadline)
                assert self._read_exact(2, deadline) == b"\r\n"
            while True:
                line = self._read_line(deadline)
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                resp.trailers.append((name, value.strip()))
            resp.body = bytes(body)
        elif resp.header("content-length") is not None:
            resp.body = self._read_exact(int(resp.header("content-length") or 0), deadline)
        else:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    self._fill(deadline)
            resp.body = bytes(self.buf)
            self.buf.clear()
        return resp

    def wait_closed(self, timeout: float = 3.0) -> bytes:
        """Wait for the peer to close; returns whatever else it sent. AssertionError if it stays open."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            rest = bytes(self.buf)
            self.buf.clear()
            return rest
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s; got {bytes(self.buf[:300])!r}") from None

    def is_open(self, wait: float = 0.3) -> bool:
        """True if the connection is still open after `wait` seconds with nothing more to read."""
        try:
            self._fill(time.monotonic() + wait)
        except TimeoutError:
            return True
        except ConnectionClosed:
            return False
        return True  # more bytes arrived; still open


def raw_request(port: int, data: bytes, method: str = "GET", timeout: float = 5.0) -> tuple[RawResponse, bool]:
    """Send `data` on a new connection, read one response; returns it and whether the proxy then closed."""
    with RawConnection(port, timeout) as conn:
        conn.send(data)
        resp = conn.read_response(method)
        try:
            rest = conn.wait_closed(timeout)
        except AssertionError:
            return resp, False
        assert rest == b"", f"more bytes after the response: {rest[:300]!r}"
        return resp, True

