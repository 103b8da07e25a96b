"""Starting, watching, measuring and stopping the processes under test.

Each process is started in its own session (so Ctrl-C in the terminal reaches only the
harness, which then stops them in order) and optionally pinned with ``taskset``. Memory and
CPU are read from /proc and summed over the whole process tree, since a server may run a
master and worker processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpclient


class StartError(RuntimeError):
    """A process under test did not start or did not answer correctly."""


REPO_ROOT = Path(__file__).resolve().parent.parent


def checkout_env() -> dict[str, str]:
    """The environment that runs Portcullis from this checkout (whatever else is installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def taskset_prefix(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="latin-1") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain anything, so split after it.
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="latin-1") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="latin-1") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="latin-1") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times() -> dict[int, tuple[int, int]]:
    """CPU number -> (busy ticks, total ticks) from /proc/stat."""
    times: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(v) for v in values[:8]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def cpu_busy(seconds: float = 1.0) -> dict[int, float]:
    """Per-CPU busy percentage over the next `seconds` (whatever is running, ours or not)."""
    before = cpu_times()
    time.sleep(seconds)
    return busy_between(before, cpu_times())


def busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Per-CPU busy percentage between two cpu_times() snapshots."""
    busy: dict[int, float] = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        busy[cpu] = 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


class Managed:
    """One server process (and its children) started by the harness."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cpu: int | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [*taskset_prefix(cpu), *argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.tree())

    def cpu_ticks(self) -> int:
        return sum(cpu_ticks(pid) for pid in self.tree())

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, port: int, timeout: float, small_size: int) -> None:
        """Wait until the port accepts and ``GET /small`` answers 200 with the right body."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise StartError(f"{self.name} exited with status {code}:\n{self.log_tail()}")
            try:
                response = httpclient.get("127.0.0.1", port, "/small", timeout=2.0)
            except (OSError, httpclient.HttpError) as exc:
                last_error = str(exc) or type(exc).__name__
            else:
                if response.status == 200 and len(response.body) == small_size:
                    return
                last_error = f"GET /small gave {response.status} with {len(response.body)} bytes"
            time.sleep(0.1)
        raise StartError(f"{self.name} not ready after {timeout:.0f}s ({last_error}):\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and everything it started; SIGKILL whatever outlives the grace period.

        Signals go to our own process group while its leader is not yet reaped (so the group
        id cannot have been reused), and afterwards only to recorded pids whose start time
        still matches, so nothing but the processes started here is ever signalled.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        members = [(pid, start_time(pid)) for pid in self.tree()]
        pgid = self.proc.pid  # start_new_session=True: the leader's pid is the group id
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=grace)
        for pid, started in members:  # children that outlived the leader or left the group
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
