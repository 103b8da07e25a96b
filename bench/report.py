"""Summaries over rounds, the goals, the printed table and the JSON record."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from idle import IdleResult
from wrkload import WrkResult

RSS_GOAL_BYTES = 8 * 1024
DISTURBED_PCT = 15.0
"""A run is marked disturbed when the pinned CPUs did more than this much (percent of one
CPU) beyond the benchmark's own processes."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    headers: tuple[str, ...]
    goal_ratio: float
    """Minimum candidate/nginx requests-per-second ratio the project aims for."""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("small_keepalive", "100 B, keep-alive", "/small", (), 0.4),
    Scenario("large_keepalive", "64 KiB, keep-alive", "/64k", (), 0.8),
    Scenario("small_new_conn", "100 B, new conn/request", "/small", ("Connection: close",), 0.6),
)


@dataclass(frozen=True)
class Run:
    """One wrk run against one proxy, with the proxy's CPU use while it ran."""

    round: int
    wrk: WrkResult
    proxy_cpu_pct: float
    load_cpu_pct: float | None = None
    """wrk plus the backend nginx."""
    other_cpu_pct: float | None = None
    """CPU time on the pinned CPUs not used by the benchmark's processes (None if unpinned)."""

    @property
    def disturbed(self) -> bool:
        return self.other_cpu_pct is not None and self.other_cpu_pct > DISTURBED_PCT

    def to_json(self) -> dict[str, Any]:
        def pct(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "round": self.round,
            "proxy_cpu_pct": pct(self.proxy_cpu_pct),
            "load_cpu_pct": pct(self.load_cpu_pct),
            "other_cpu_pct": pct(self.other_cpu_pct),
            "disturbed": self.disturbed,
            **self.wrk.to_json(),
        }


@dataclass
class Summary:
    rps: float
    p99_ms: float | None
    cpu_pct: float
    errors: int

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Summary:
        p99s = [r.wrk.p99_ms for r in runs if r.wrk.p99_ms is not None]
        return cls(
            rps=statistics.median(r.wrk.rps for r in runs),
            p99_ms=statistics.median(p99s) if p99s else None,
            cpu_pct=statistics.median(r.proxy_cpu_pct for r in runs),
            errors=sum(r.wrk.errors for r in runs),
        )


@dataclass
class Results:
    reference: str
    candidate: str
    settings: dict[str, Any]
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    """scenario key -> proxy label -> runs in round order."""
    idle: dict[str, IdleResult] = field(default_factory=dict)

    def add(self, scenario: Scenario, label: str, run: Run) -> None:
        self.runs.setdefault(scenario.key, {}).setdefault(label, []).append(run)

    def summary(self, scenario: Scenario, label: str) -> Summary | None:
        runs = self.runs.get(scenario.key, {}).get(label)
        return Summary.of(runs) if runs else None

    def ratio(self, scenario: Scenario) -> float | None:
        ref = self.summary(scenario, self.reference)
        cand = self.summary(scenario, self.candidate)
        if ref is None or cand is None or ref.rps <= 0:
            return None
        return cand.rps / ref.rps

    def cpu_ratio(self, scenario: Scenario) -> float | None:
        """Ratio of requests per CPU-second of the proxy: the comparison when the proxies'
        CPU was not saturated (e.g. nginx waiting on the shared load CPU)."""
        ref = self.summary(scenario, self.reference)
        cand = self.summary(scenario, self.candidate)
        if ref is None or cand is None or min(ref.rps, ref.cpu_pct, cand.cpu_pct) <= 0:
            return None
        return (cand.rps / cand.cpu_pct) / (ref.rps / ref.cpu_pct)

    def goals(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for scenario in SCENARIOS:
            ratio = self.ratio(scenario)
            cand = self.summary(scenario, self.candidate)
            valid = ratio is not None and cand is not None and cand.errors == 0
            out.append({
                "goal": f"{scenario.title}: req/s >= {scenario.goal_ratio:.1f} x nginx",
                "scenario": scenario.key,
                "target": scenario.goal_ratio,
                "value": ratio,
                "met": bool(valid and ratio is not None and ratio >= scenario.goal_ratio),
                "note": None if valid or cand is None else f"{cand.errors} errors",
            })
        idle = self.idle.get(self.candidate)
        per_conn = idle.bytes_per_connection if idle else None
        out.append({
            "goal": "RSS per idle keep-alive connection <= 8 KiB",
            "scenario": "idle_rss",
            "target": RSS_GOAL_BYTES,
            "value": per_conn,
            "met": bool(per_conn is not None and idle and not idle.error and per_conn <= RSS_GOAL_BYTES),
            "note": (idle.error if idle else "not measured"),
        })
        return out

    def disturbed(self) -> tuple[int, int]:
        """(disturbed runs, all runs)."""
        runs = [run for by_label in self.runs.values() for rs in by_label.values() for run in rs]
        return sum(run.disturbed for run in runs), len(runs)

    def to_json(self) -> dict[str, Any]:
        summaries: dict[str, Any] = {}
        for scenario in SCENARIOS:
            entry: dict[str, Any] = {
                "title": scenario.title,
                "ratio": self.ratio(scenario),
                "ratio_per_cpu_second": self.cpu_ratio(scenario),
            }
            for label in (self.reference, self.candidate):
                summary = self.summary(scenario, label)
                entry[label] = None if summary is None else vars(summary)
            summaries[scenario.key] = entry
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "settings": self.settings,
            "summary": summaries,
            "idle_rss": {label: result.to_json() for label, result in self.idle.items()},
            "goals": self.goals(),
            "disturbed_runs": self.disturbed()[0],
            "runs": {
                key: {label: [r.to_json() for r in runs] for label, runs in by_label.items()}
                for key, by_label in self.runs.items()
            },
        }


# --------------------------------------------------------------------------- text

def _rps(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.rps:,.0f}"


def _p99(summary: Summary | None) -> str:
    return "-" if summary is None or summary.p99_ms is None else f"{summary.p99_ms:.2f} ms"


def _cpu(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.cpu_pct:.0f}%"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.2f} KiB"


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_text(results: Results) -> str:
    ref, cand = results.reference, results.candidate
    rows = [["scenario", f"{ref} req/s", f"{cand} req/s", "ratio", f"{ref} p99", f"{cand} p99",
             f"{ref} cpu", f"{cand} cpu", "ratio/cpu", "goal"]]
    goals = {g["scenario"]: g for g in results.goals()}
    for scenario in SCENARIOS:
        r, c = results.summary(scenario, ref), results.summary(scenario, cand)
        ratio, cpu_ratio = results.ratio(scenario), results.cpu_ratio(scenario)
        goal = goals[scenario.key]
        verdict = f">= {scenario.goal_ratio:.1f} {'met' if goal['met'] else 'NOT MET'}"
        errors = [f"{label}: {s.errors} errors" for label, s in ((ref, r), (cand, c)) if s and s.errors]
        if errors:
            verdict += f" ({'; '.join(errors)})"
        rows.append([scenario.title, _rps(r), _rps(c), "-" if ratio is None else f"{ratio:.2f}",
                     _p99(r), _p99(c), _cpu(r), _cpu(c), "-" if cpu_ratio is None else f"{cpu_ratio:.2f}",
                     verdict])
    lines = [_table(rows, right={1, 2, 3, 4, 5, 6, 7, 8})]
    lines.append("")
    idle_goal = goals["idle_rss"]
    parts = []
    for label in (ref, cand):
        idle = results.idle.get(label)
        if idle is None:
            parts.append(f"{label} -")
            continue
        text = f"{label} {_kib(idle.bytes_per_connection)}/conn ({idle.opened} conns"
        text += f", RSS {idle.rss_before_kib / 1024:.1f} -> {idle.rss_after_kib / 1024:.1f} MiB)"
        if idle.error:
            text += f" [{idle.error}]"
        parts.append(text)
    verdict = "met" if idle_goal["met"] else "NOT MET" if cand in results.idle else "not measured"
    lines.append(f"RSS per idle keep-alive connection: {'; '.join(parts)}   goal <= 8 KiB {verdict}")
    disturbed, total = results.disturbed()
    if disturbed:
        lines.append(f"\nwarning: {disturbed} of {total} runs shared the pinned CPUs with other processes "
                     f"(> {DISTURBED_PCT:.0f}% of a CPU); rerun on a quiet machine before trusting them")
    return "\n".join(lines)
