"""Running wrk and reading its text output (``--latency`` gives the percentiles)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from procs import taskset_prefix

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]
    """Percentile ("50", "75", "90", "99") -> milliseconds."""
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def p99_ms(self) -> float | None:
        return self.latency_ms.get("99")

    @property
    def errors(self) -> int:
        """Failed responses plus socket errors of any kind."""
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise WrkError(f"unrecognised wrk time {text!r}")
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)]


def parse_output(text: str) -> WrkResult:
    summary = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", text, re.M)
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if not summary or not rps:
        raise WrkError(f"could not parse wrk output:\n{text}")
    latency: dict[str, float] = {}
    dist = text.partition("Latency Distribution")[2]
    for pct, value in re.findall(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$", dist, re.M):
        latency[pct.removesuffix(".0")] = parse_duration_ms(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    socket_errors: dict[str, int] = {}
    errors = re.search(r"Socket errors:(.*)$", text, re.M)
    if errors:
        for kind, count in re.findall(r"(\w+) (\d+)", errors.group(1)):
            socket_errors[kind] = int(count)
    return WrkResult(
        requests=int(summary.group(1)),
        seconds=parse_duration_ms(summary.group(2) + summary.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        latency_ms=latency,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_argv(
    wrk: str,
    url: str,
    *,
    duration_s: int,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
    cpu: int | None = None,
    timeout_s: int = 5,
) -> list[str]:
    argv = [
        *taskset_prefix(cpu),
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
    ]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def run(argv: Sequence[str], duration_s: int) -> tuple[WrkResult, str]:
    """Run wrk to completion (bounded well past its own duration) and parse what it printed."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration_s + 30}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_output(done.stdout), done.stdout
