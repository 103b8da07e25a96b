#!/usr/bin/env python3
"""Portcullis vs nginx, side by side, in front of the same nginx backend.

Starts a backend nginx, nginx as the reference proxy and Portcullis (or any command given
with --proxy-cmd, or a second nginx with --self-test), pins them to CPUs, drives each with
wrk in interleaved rounds and prints requests/s, p99 and the ratio to nginx, plus the RSS
cost of an idle keep-alive connection. See bench/README.md.

Exit status: 0 when the measurement ran (whether or not the goals are met), 1 when
something failed to start or died, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpclient
import idle
import procs
import report
import templating
import wrkload
from procs import CLOCK_TICKS, Managed, StartError, checkout_env, cpu_busy, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"


@dataclass
class Target:
    """A proxy under measurement."""

    label: str
    server: Managed
    port: int


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Portcullis against nginx (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (whole seconds)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 1 s warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load per proxy first")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of quiet between wrk runs")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--idle-conns", type=int, default=2000,
                        help="idle keep-alive connections for the RSS measurement (0 skips it)")
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy under test")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for the backend nginx and wrk")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything to CPUs")
    candidate = parser.add_mutually_exclusive_group()
    candidate.add_argument("--self-test", action="store_true",
                           help="measure a second nginx proxy in place of Portcullis (checks the harness)")
    candidate.add_argument("--proxy-cmd", metavar="CMD",
                           help="command to measure in place of Portcullis; {port}, {backend_port}, "
                                "{config} (the generated Portcullis YAML) and {tmpdir} are filled in")
    parser.add_argument("--label", help="name of the candidate in the output")
    parser.add_argument("--workers", type=int, default=1, help="Portcullis worker processes")
    parser.add_argument("--access-log", action="store_true",
                        help="Portcullis writes its JSON access log to a file (nginx keeps access_log off)")
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for a server")
    parser.add_argument("--json", type=Path, help="where to write the JSON results "
                        "(default bench/results/<timestamp>-<candidate>.json)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --duration, --connections and --threads must be at least 1")
    if args.threads > args.connections:
        parser.error("wrk needs --connections >= --threads")
    if args.idle_conns < 0 or args.warmup < 0 or args.pause < 0:
        parser.error("--idle-conns, --warmup and --pause cannot be negative")
    if args.label is None:
        args.label = "nginx-b" if args.self_test else "candidate" if args.proxy_cmd else "portcullis"
    if args.label == "nginx":
        parser.error("--label cannot be 'nginx' (that is the reference)")
    return args


def choose_cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.no_pin:
        return None, None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        log(f"only CPUs {sorted(allowed)} available: running without pinning")
        return None, None
    for cpu in (args.proxy_cpu, args.load_cpu):
        if cpu not in allowed:
            raise SystemExit(f"CPU {cpu} is not available (allowed: {sorted(allowed)})")
    if args.proxy_cpu == args.load_cpu:
        log("warning: proxy and load share a CPU")
    return args.proxy_cpu, args.load_cpu


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the cleanup in finally blocks runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Bench:
    def __init__(self, args: argparse.Namespace, tmpdir: Path, nginx: str, wrk: str) -> None:
        self.args = args
        self.tmpdir = tmpdir
        self.nginx = nginx
        self.wrk = wrk
        self.build_info = templating.nginx_build_info(nginx)
        self.proxy_cpu, self.load_cpu = choose_cpus(args)
        self.servers: list[Managed] = []
        self.backend: Managed | None = None

    # ----------------------------------------------------------------- starting

    def _nginx(self, name: str, template: str, values: dict[str, str], cpu: int | None) -> Managed:
        conf = self.tmpdir / f"{name}.conf"
        conf.write_text(templating.render_file(
            template, {**templating.nginx_values(self.build_info, self.tmpdir), "name": name, **values}
        ))
        argv = templating.nginx_argv(self.nginx, self.tmpdir, conf)
        # Let nginx itself reject a bad config with a readable message before starting it.
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise StartError(f"nginx rejected {conf.name}:\n{check.stderr}")
        return Managed(name, argv, self.tmpdir / f"{name}.out", cpu=cpu)

    def _start(self, server: Managed, port: int) -> None:
        self.servers.append(server)
        server.start()
        server.wait_ready(port, self.args.start_timeout, templating.SMALL_BODY_SIZE)

    def start_all(self) -> tuple[Target, Target]:
        docroot = self.tmpdir / "www"
        docroot.mkdir()
        (docroot / "64k").write_bytes(templating.large_body())
        backend_port, ref_port, cand_port = free_port(), free_port(), free_port()
        while len({backend_port, ref_port, cand_port}) < 3:
            cand_port = free_port()

        log(f"starting backend nginx on :{backend_port} (CPU {self.load_cpu})")
        backend = self._nginx("backend", "backend.conf", {
            "port": str(backend_port), "docroot": str(docroot), "small_body": templating.small_body(),
        }, self.load_cpu)
        self._start(backend, backend_port)
        self.backend = backend

        log(f"starting nginx proxy on :{ref_port} (CPU {self.proxy_cpu})")
        ref = self._nginx("nginx", "proxy.conf", {
            "port": str(ref_port), "backend_port": str(backend_port),
        }, self.proxy_cpu)
        self._start(ref, ref_port)

        label = self.args.label
        log(f"starting {label} on :{cand_port} (CPU {self.proxy_cpu})")
        yaml_path = self.tmpdir / "portcullis.yaml"
        access_log = f"access_log: {{path: {self.tmpdir / 'access.log'}, format: json}}" if self.args.access_log else ""
        yaml_path.write_text(templating.render_file("portcullis.yaml", {
            "port": str(cand_port), "backend_port": str(backend_port), "workers": str(self.args.workers),
            "access_log": access_log,
        }))
        if self.args.self_test:
            cand = self._nginx(label, "proxy.conf", {
                "port": str(cand_port), "backend_port": str(backend_port),
            }, self.proxy_cpu)
        else:
            if self.args.proxy_cmd:
                fill = {"port": cand_port, "backend_port": backend_port, "config": yaml_path,
                        "tmpdir": self.tmpdir}
                argv = [part.format(**fill) for part in shlex.split(self.args.proxy_cmd)]
            else:
                argv = [sys.executable, "-m", "portcullis", "run", "-c", str(yaml_path)]
            env = checkout_env()
            cand = Managed(label, argv, self.tmpdir / f"{label}.out", cpu=self.proxy_cpu,
                           cwd=REPO_ROOT, env=env)
        self._start(cand, cand_port)

        targets = (Target("nginx", ref, ref_port), Target(label, cand, cand_port))
        self._check_content(targets)
        return targets

    def _check_content(self, targets: Sequence[Target]) -> None:
        expected = {"/small": templating.small_body().encode(), "/64k": templating.large_body()}
        for target in targets:
            for path, body in expected.items():
                try:
                    response = httpclient.get(HOST, target.port, path)
                except (OSError, httpclient.HttpError) as exc:
                    raise StartError(f"{target.label}: GET {path} failed: {exc}") from exc
                if response.status != 200 or response.body != body:
                    raise StartError(f"{target.label}: GET {path} gave {response.status} with "
                                     f"{len(response.body)} bytes that do not match the backend's")

    # ----------------------------------------------------------------- measuring

    def _wrk(self, target: Target, scenario: report.Scenario, seconds: int) -> report.Run:
        argv = wrkload.wrk_argv(
            self.wrk, f"http://{HOST}:{target.port}{scenario.path}", duration_s=seconds,
            connections=self.args.connections, threads=self.args.threads,
            headers=scenario.headers, cpu=self.load_cpu,
        )
        assert self.backend is not None
        cpus_before = procs.cpu_times()
        proxy_ticks, backend_ticks = target.server.cpu_ticks(), self.backend.cpu_ticks()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it is waited for
        started = time.monotonic()
        result, _ = wrkload.run(argv, seconds)
        wall = time.monotonic() - started
        busy = procs.busy_between(cpus_before, procs.cpu_times())
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_seconds = (children_after.ru_utime + children_after.ru_stime
                       - children.ru_utime - children.ru_stime)
        proxy_pct = 100.0 * (target.server.cpu_ticks() - proxy_ticks) / CLOCK_TICKS / wall
        load_pct = 100.0 * ((self.backend.cpu_ticks() - backend_ticks) / CLOCK_TICKS + wrk_seconds) / wall
        other_pct: float | None = None
        if self.proxy_cpu is not None and self.load_cpu is not None:
            # Whatever the pinned CPUs did beyond our own processes: other programs (and
            # some interrupt time). More than a few percent means the numbers are disturbed.
            other_pct = (max(0.0, busy.get(self.proxy_cpu, 0.0) - proxy_pct)
                         + max(0.0, busy.get(self.load_cpu, 0.0) - load_pct))
        if not target.server.alive():
            raise StartError(f"{target.label} died during the run:\n{target.server.log_tail()}")
        return report.Run(0, result, proxy_pct, load_pct, other_pct)

    def measure(self, targets: tuple[Target, Target], results: report.Results) -> None:
        args = self.args
        if args.idle_conns:
            # First, on fresh processes: after load, memory freed by the load (buffers of
            # finished requests) would be reused for the idle connections and hide their cost.
            self.measure_idle(targets, results)
        if args.warmup:
            log(f"warming up ({args.warmup}s per proxy and scenario)")
            for target in targets:
                for scenario in report.SCENARIOS:
                    self._wrk(target, scenario, args.warmup)
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for scenario in report.SCENARIOS:
                for target in order:
                    time.sleep(args.pause)
                    run = dataclasses.replace(self._wrk(target, scenario, args.duration), round=rnd + 1)
                    results.add(scenario, target.label, run)
                    result = run.wrk
                    p99 = "-" if result.p99_ms is None else f"{result.p99_ms:.2f} ms"
                    notes = f", {result.errors} errors" if result.errors else ""
                    if run.disturbed:
                        notes += f", other load {run.other_cpu_pct:.0f}% of a CPU"
                    log(f"[round {rnd + 1}/{args.rounds}] {scenario.title:<24} {target.label:<12} "
                        f"{result.rps:>10,.0f} req/s  p99 {p99:>9}  cpu {run.proxy_cpu_pct:3.0f}%{notes}")

    def measure_idle(self, targets: tuple[Target, Target], results: report.Results) -> None:
        for target in targets:
            result = idle.measure(target.server, target.port, self.args.idle_conns)
            results.idle[target.label] = result
            per_conn = result.bytes_per_connection
            shown = "-" if per_conn is None else f"{per_conn / 1024:.2f} KiB"
            log(f"[idle] {target.label:<12} {result.opened} conns in {result.seconds_to_open:.1f}s: "
                f"{shown}/conn" + (f" ({result.error})" if result.error else ""))
            if not target.server.alive():
                raise StartError(f"{target.label} died during the idle test:\n{target.server.log_tail()}")
            time.sleep(self.args.pause)

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                log(f"could not stop {server.name}: {exc}")

    def settings(self) -> dict[str, Any]:
        args = self.args
        wrk_version = subprocess.run([self.wrk, "-v"], capture_output=True, text=True, timeout=10,
                                     check=False).stdout.splitlines()
        return {
            "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "threads": args.threads, "idle_conns": args.idle_conns,
            "proxy_cpu": self.proxy_cpu, "load_cpu": self.load_cpu,
            "candidate_cmd": args.proxy_cmd or ("nginx (self-test)" if args.self_test
                                                else "python -m portcullis run -c FILE"),
            "nginx": templating.nginx_version(self.build_info),
            "wrk": wrk_version[0].strip() if wrk_version else "wrk",
            "python": platform.python_version(), "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "portcullis_build": "" if args.proxy_cmd or args.self_test else _portcullis_build(),
        }


def _portcullis_build() -> str:
    """What `portcullis version` says of the checkout measured: compiled or pure Python."""
    done = subprocess.run([sys.executable, "-m", "portcullis", "version"], capture_output=True, text=True,
                          timeout=30, check=False, cwd=REPO_ROOT, env=checkout_env())
    return done.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def check_quiet() -> dict[int, float]:
    """Warn when the machine is already busy: other load on these CPUs skews every number."""
    busy = cpu_busy(1.0)
    noisy = {cpu: pct for cpu, pct in busy.items() if pct > 10.0}
    if noisy:
        shown = ", ".join(f"CPU {cpu} {pct:.0f}%" for cpu, pct in sorted(noisy.items()))
        log(f"warning: the machine is busy before the run ({shown}); expect noisy numbers")
    return {cpu: round(pct, 1) for cpu, pct in busy.items()}


def write_json(results: report.Results, path: Path | None, complete: bool) -> Path:
    if path is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        safe_label = re.sub(r"[^\w.-]+", "_", results.candidate)
        path = RESULTS_DIR / f"{stamp}-{safe_label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"finished_at": datetime.now(UTC).isoformat(), "complete": complete, **results.to_json()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def missing_tools(pin: bool) -> list[str]:
    missing = []
    if templating.find_nginx() is None:
        missing.append("nginx")
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if pin and shutil.which("taskset") is None:
        missing.append("taskset (util-linux)")
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(not args.no_pin)
    if missing:
        log(f"missing: {', '.join(missing)}; on Debian: apt-get install -y nginx-light wrk util-linux")
        return 1
    nginx, wrk = templating.find_nginx(), shutil.which("wrk")
    assert nginx is not None and wrk is not None
    idle.ensure_fd_limit(max(args.idle_conns, args.connections) + 1024)  # children inherit it

    tmpdir = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    bench: Bench | None = None
    results: report.Results | None = None
    status = 0
    with terminate_on_signals():
        try:
            bench = Bench(args, tmpdir, nginx, wrk)
            if bench.load_cpu is not None:
                # The harness itself is a load generator in the idle test: keep it off the proxy's CPU.
                os.sched_setaffinity(0, {bench.load_cpu})
            results = report.Results("nginx", args.label, bench.settings())
            results.settings["cpu_busy_before_pct"] = check_quiet()
            targets = bench.start_all()
            log(f"{results.settings['nginx']} vs {args.label}: {args.rounds} round(s) x {args.duration}s, "
                f"wrk -t{args.threads} -c{args.connections}, proxy on CPU {bench.proxy_cpu}, "
                f"backend and wrk on CPU {bench.load_cpu}")
            if results.settings["portcullis_build"]:
                log(results.settings["portcullis_build"])
            bench.measure(targets, results)
        except StartError as exc:
            log(f"error: {exc}")
            status = 1
        except wrkload.WrkError as exc:
            log(f"error: {exc}")
            status = 1
        except KeyboardInterrupt as exc:
            log(f"interrupted{f' by {exc}' if str(exc) else ''}; stopping servers")
            status = 130
        finally:
            if bench is not None:
                bench.stop_all()
            if args.keep_tmp or status == 1:
                log(f"configs and logs kept in {tmpdir}")
            else:
                shutil.rmtree(tmpdir, ignore_errors=True)

    if results is not None and (results.runs or results.idle):
        print()
        print(report.format_text(results))
        path = write_json(results, args.json, complete=status == 0)
        print(f"\nJSON results: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
