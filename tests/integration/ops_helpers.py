"""Helpers for the operations tests: a `portcullis run` process whose config file the test owns and
rewrites (reloads, listener moves), with its own admin listener, separate stdout/stderr files,
signals, the JSON events of stderr and the access log file.

Every wait here is bounded; every process started through `OpsProxyFactory` is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from harness import START_TIMEOUT, STOP_TIMEOUT, Upstream, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

ADMIN_TOKEN = "s3cret-admin-token"


def ops_config(*peers: Upstream, workers: int = 1, **extra: Any) -> dict[str, Any]:
    """An upstream `main` over `peers`, a `backend` route to it (every path) and whatever `extra` adds."""
    config: dict[str, Any] = {
        "workers": workers,
        "upstreams": {"main": {"peers": [{"url": p.url} for p in peers]}},
        "routes": [{"name": "backend", "match": {"path_prefix": "/"}, "upstream": "main"}],
    }
    config.update(extra)
    return config


def respond_route(name: str, path: str, body: str) -> dict[str, Any]:
    return {"name": name, "match": {"path": path}, "filters": [{"type": "respond", "status": 200, "body": body}]}


class OpsProxy:
    """`python3 -m portcullis run -c FILE` with an admin listener; the test may rewrite FILE and reload."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, name: str, token: str | None = None, wait: bool = True
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.token = token
        self.config_path = workdir / f"{name}.yaml"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            self.admin_port = free_port()
            self.config = self._complete(config, self.port)
            self.write_config(self.config)
            self._out = open(self.stdout_path, "wb")  # noqa: SIM115
            self._err = open(self.stderr_path, "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "portcullis", "run", "-c", str(self.config_path)],
                stdout=self._out,
                stderr=self._err,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
            if not wait or self._wait_ready(START_TIMEOUT):
                break
            self.stop()
            last_error = self.stderr()
            if "cannot listen" not in last_error:
                raise RuntimeError(f"portcullis {name} did not start:\n{last_error}")
        else:
            raise RuntimeError(f"portcullis {name} did not start:\n{last_error}")
        self.pid = self.proc.pid

    # ------------------------------------------------------------------ config file
    def _complete(self, config: dict[str, Any], port: int) -> dict[str, Any]:
        cfg = json.loads(json.dumps(config))
        # the first listener gets the free port unless the config gave it an address
        first = cfg.setdefault("listeners", [{}])[0]
        first.setdefault("name", "web")
        first.setdefault("listen", f"127.0.0.1:{port}")
        admin: dict[str, Any] = {"listen": f"127.0.0.1:{self.admin_port}"}
        if self.token is not None:
            admin["token"] = self.token
        cfg["admin"] = admin
        return cfg

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the config file (JSON is YAML), atomically so a reload never reads half a file."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)

    def write_text(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def rewrite(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to a copy of the running config dict and write it (keeps admin and listeners)."""
        cfg = json.loads(json.dumps(self.config))
        change(cfg)
        self.config = cfg
        self.write_config(cfg)
        return cfg

    # ------------------------------------------------------------------ process
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def _wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                r = httpx.get(self.admin_url + "/readyz", headers=self._auth(), timeout=1.0)
                if r.status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return True
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._out.close()
        self._err.close()

    # ------------------------------------------------------------------ output
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON event lines of stderr (master's and workers'); other lines are skipped."""
        out = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def wait_event(self, name: str, timeout: float, **fields: Any) -> dict[str, Any] | None:
        found: list[dict[str, Any]] = []

        def look() -> bool:
            found[:] = [
                e for e in self.events() if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]
            return bool(found)

        wait_until(look, timeout)
        return found[0] if found else None

    # ------------------------------------------------------------------ admin API
    def _auth(self, token: str | None = None) -> dict[str, str]:
        token = token if token is not None else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def admin(self, method: str, path: str, token: str | None = None, timeout: float = 10.0) -> httpx.Response:
        return httpx.request(method, self.admin_url + path, headers=self._auth(token), timeout=timeout)

    def status(self) -> dict[str, Any]:
        r = self.admin("GET", "/api/status")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def reload_api(self) -> httpx.Response:
        return self.admin("POST", "/api/reload", timeout=30.0)

    def reload_signal(self, generation: int, timeout: float = 10.0) -> dict[str, Any]:
        """SIGHUP, then wait until /api/status shows `generation` with every worker on it."""
        self.signal(signal.SIGHUP)
        status: dict[str, Any] = {}

        def done() -> bool:
            status.update(self.status())
            return status["generation"] >= generation and all(w["generation"] >= generation for w in status["workers"])

        assert wait_until(done, timeout), f"reload to generation {generation} not done: {status}"
        return status

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Every sample of /metrics by sample name, then by its sorted labels."""
        r = self.admin("GET", "/metrics")
        assert r.status_code == 200, r.text
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out


class OpsProxyFactory:
    def __init__(self, workdir: Path, prefix: str) -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.started: list[OpsProxy] = []

    def __call__(self, config: dict[str, Any], token: str | None = None, wait: bool = True) -> OpsProxy:
        """A started proxy; with `wait=False` it may still be starting (and its ports may be taken)."""
        proxy = OpsProxy(config, self.workdir, f"{self.prefix}{len(self.started)}", token, wait)
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.started:
            proxy.stop()


@contextlib.contextmanager
def ops_proxies(workdir: Path, prefix: str) -> Iterator[OpsProxyFactory]:
    factory = OpsProxyFactory(workdir, prefix)
    try:
        yield factory
    finally:
        factory.close()


class Reply:
    """A response read whole from a connection of its own."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def new_connection_get(
    url: str,
    timeout: float = 10.0,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a connection of its own, closed afterwards (http.client: cheap, no pool)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, predicate: Callable[[list[str]], bool], timeout: float = 3.0) -> list[str]:
    """Poll `path` until `predicate(lines)` holds (the access log is flushed every 0.25 s)."""
    lines: list[str] = []

    def check() -> bool:
        lines[:] = read_lines(path)
        return predicate(lines)

    wait_until(check, timeout, 0.05)
    return lines


def child_pids(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
