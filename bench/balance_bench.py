#!/usr/bin/env python3
"""What load balancing costs: requests/s through Portcullis to three nginx peers, per algorithm,
against the same Portcullis forwarding to a single-peer upstream (issue 5: at most 5 % less).

One Portcullis process (one worker, pinned to the proxy CPU) gets one listener per case, each
with a single route to its own upstream, so every case has the same routing work:

    single            one peer (the baseline: no selection, no bookkeeping)
    round_robin ...   three peers, `balance: <algorithm>` (consistent_hash on `header:X-User`)

nginx, pinned to the same CPU, forwards to the same backends through one peer and through each
algorithm's nginx counterpart (`least_conn`, `random`, `random two least_conn` for p2c_ewma,
`ip_hash`, `hash $http_x_user consistent`): spreading the load costs any proxy something (the
backend is woken more often when its connections are used in an irregular order, and more
processes are woken with --separate-backends), and nginx's own cost for the same method shows
how much of it is not ours. The report gives each algorithm's cost beyond nginx's.

The three peers are three ports of one backend nginx process (the template of bench/run.py), so
that the backend side is the same in every case and the difference is the proxy's balancing
work. With `--separate-backends` each peer is its own nginx process instead: then every proxy
also pays for waking more processes (the nginx rows show how much), which is the kernel's cost
of spreading the load, not the balancer's. The backends and wrk share the load CPU. The
cases run in interleaved rounds (the order rotates each round) with `wrk -c32` on 100-byte
responses over keep-alive, and the report gives the median requests/s, the proxy's CPU use,
requests per proxy CPU-second, and both as a cost against `single`.

Then, in this process and without any I/O, it times what the engine does per request for
balancing (`UpstreamGroup.select`, the in-flight count, `record`) for each algorithm against
the single-peer group, and gives the difference as a share of the proxy's CPU time per request
measured above: a figure that other load on the machine hardly moves. Like bench/run.py this
is a measurement, not a test: it exits 0 when it ran, whatever the figures.

    python3 bench/balance_bench.py                  # 3 rounds of 5 s per case (about 4 minutes)
    python3 bench/balance_bench.py --quick          # 1 round of 3 s, for a rough look
    python3 bench/balance_bench.py --separate-backends   # one backend process per peer
    python3 bench/balance_bench.py --rounds 5 --duration 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpclient
import templating
import wrkload
from procs import CLOCK_TICKS, Managed, StartError, checkout_env, cpu_busy, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
ALGORITHMS = ("round_robin", "least_conn", "random", "p2c_ewma", "ip_hash", "consistent_hash")
BASELINE = "single"
PEERS = 3
GOAL_COST_PCT = 5.0
# nginx's counterpart of each algorithm: its case's name, and the directive in its upstream block
NGINX_METHODS = {
    "round_robin": ("nginx round_robin", ""),
    "least_conn": ("nginx least_conn", "least_conn;"),
    "random": ("nginx random", "random;"),
    # power of two choices, on connections rather than latency
    "p2c_ewma": ("nginx random two", "random two least_conn;"),
    "ip_hash": ("nginx ip_hash", "ip_hash;"),
    "consistent_hash": ("nginx hash consistent", "hash $http_x_user consistent;"),
}
NGINX_SINGLE = "nginx single"
HEADERS = ("X-User: bench-user",)  # sent in every case, so only consistent_hash differs in using it


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Case:
    name: str
    port: int
    proxy: str = "portcullis"
    rps: list[float] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu_pct)

    @property
    def spread_pct(self) -> float:
        """(highest - lowest) / median req/s over the rounds: how far one case's runs disagree."""
        return 100.0 * (max(self.rps) - min(self.rps)) / self.median_rps

    @property
    def per_cpu_second(self) -> float:
        """Requests per CPU-second of the proxy, the median over the rounds."""
        return statistics.median(r / (c / 100.0) for r, c in zip(self.rps, self.cpu_pct, strict=True) if c > 0)


def portcullis_config(cases: Sequence[Case], backend_ports: Sequence[int]) -> dict[str, Any]:
    upstreams: dict[str, Any] = {BASELINE: {"peers": [{"url": f"http://{HOST}:{backend_ports[0]}"}]}}
    for algorithm in ALGORITHMS:
        upstream: dict[str, Any] = {
            "peers": [{"url": f"http://{HOST}:{port}"} for port in backend_ports],
            "balance": algorithm,
        }
        if algorithm == "consistent_hash":
            upstream["hash_key"] = "header:X-User"
        upstreams[algorithm] = upstream
    return {
        "workers": 1,
        "listeners": [{"name": c.name, "listen": f"{HOST}:{c.port}"} for c in cases],
        "upstreams": upstreams,
        "routes": [
            {"name": c.name, "listeners": [c.name], "match": {"path_prefix": "/"}, "upstream": c.name}
            for c in cases
        ],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load per case first")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 1 s warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--separate-backends", action="store_true",
                        help="one backend nginx process per peer instead of one process with a port per peer")
    parser.add_argument("--start-timeout", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    return args


class BalanceBench:
    def __init__(self, args: argparse.Namespace, tmpdir: Path, nginx: str, wrk: str) -> None:
        self.args = args
        self.tmpdir = tmpdir
        self.nginx = nginx
        self.wrk = wrk
        self.build_info = templating.nginx_build_info(nginx)
        pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
        self.proxy_cpu = args.proxy_cpu if pin else None
        self.load_cpu = args.load_cpu if pin else None
        self.servers: list[Managed] = []
        self.proxy: Managed | None = None
        self.reference: Managed | None = None

    def _backend(self, index: int, listens: int = 1) -> list[int]:
        """Start one backend nginx listening on `listens` ports; returns the ports."""
        name = f"peer{index}"
        ports = [free_port()]
        while len(ports) < listens:
            port = free_port()
            if port not in ports:
                ports.append(port)
        port = ports[0]
        docroot = self.tmpdir / "www"
        docroot.mkdir(exist_ok=True)
        text = templating.render_file("backend.conf", {
            **templating.nginx_values(self.build_info, self.tmpdir), "port": str(port),
            "docroot": str(docroot), "small_body": templating.small_body(),
        })  # fmt: skip
        # three of them side by side: each its own pid file and error log
        text = text.replace("/backend.pid", f"/{name}.pid").replace("/backend-error.log", f"/{name}-error.log")
        listen = f"        listen {HOST}:{port} backlog=4096;\n"
        assert listen in text
        text = text.replace(listen, "".join(f"        listen {HOST}:{p} backlog=4096;\n" for p in ports))
        conf = self.tmpdir / f"{name}.conf"
        conf.write_text(text)
        server = Managed(name, templating.nginx_argv(self.nginx, self.tmpdir, conf), self.tmpdir / f"{name}.out",
                         cpu=self.load_cpu)  # fmt: skip
        self.servers.append(server)
        server.start()
        for p in ports:
            server.wait_ready(p, self.args.start_timeout, templating.SMALL_BODY_SIZE)
        return ports

    def start(self) -> list[Case]:
        if self.args.separate_backends:
            backend_ports = [self._backend(i)[0] for i in range(PEERS)]
            log(f"{PEERS} backend nginx processes on ports {backend_ports} (CPU {self.load_cpu})")
        else:
            backend_ports = self._backend(0, listens=PEERS)
            log(f"one backend nginx process on ports {backend_ports} (CPU {self.load_cpu})")
        ports: set[int] = set(backend_ports)
        cases = []
        for name in (BASELINE, *ALGORITHMS):
            port = free_port()
            while port in ports:
                port = free_port()
            ports.add(port)
            cases.append(Case(name, port))
        config = self.tmpdir / "portcullis.yaml"
        config.write_text(json.dumps(portcullis_config(cases, backend_ports), indent=2))  # JSON is YAML
        env = checkout_env()
        self.proxy = Managed("portcullis", [sys.executable, "-m", "portcullis", "run", "-c", str(config)],
                             self.tmpdir / "portcullis.out", cpu=self.proxy_cpu, cwd=REPO_ROOT, env=env)  # fmt: skip
        self.servers.append(self.proxy)
        self.proxy.start()
        for case in cases:
            self.proxy.wait_ready(case.port, self.args.start_timeout, templating.SMALL_BODY_SIZE)
            body = httpclient.get(HOST, case.port, "/small").body
            if body != templating.small_body().encode():
                raise StartError(f"{case.name}: /small through the proxy differs from the backend's")
        log(f"portcullis (1 worker, CPU {self.proxy_cpu}) listening for {len(cases)} cases")
        return cases + self._start_reference(backend_ports, ports)

    def _start_reference(self, backend_ports: Sequence[int], taken: set[int]) -> list[Case]:
        """nginx on the same CPU and backends, through one peer and through each algorithm's nginx
        counterpart over all of them: what spreading the load costs a proxy that is not ours."""
        cases = []
        for name in (NGINX_SINGLE, *(NGINX_METHODS[algorithm][0] for algorithm in ALGORITHMS)):
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            cases.append(Case(name, port, proxy="nginx"))
        text = templating.render_file("proxy.conf", {
            **templating.nginx_values(self.build_info, self.tmpdir), "name": "reference",
            "port": str(cases[0].port), "backend_port": str(backend_ports[0]),
        })  # fmt: skip
        # one more server block per algorithm: the same location, to an upstream of every backend
        peers = "".join(f"        server {HOST}:{port};\n" for port in backend_ports)
        blocks = []
        for case, algorithm in zip(cases[1:], ALGORITHMS, strict=True):
            directive = NGINX_METHODS[algorithm][1]
            method = f"        {directive}\n" if directive else ""
            blocks.append(
                f"    upstream {algorithm} {{\n{method}{peers}        keepalive 64;\n    }}\n"
                f"    server {{\n        listen {HOST}:{case.port} backlog=4096;\n"
                f"        location / {{\n            proxy_pass http://{algorithm};\n"
                '            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'
                "        }\n    }\n"
            )
        text = text.rstrip().removesuffix("}") + "".join(blocks) + "}\n"
        conf = self.tmpdir / "reference.conf"
        conf.write_text(text)
        self.reference = Managed("nginx", templating.nginx_argv(self.nginx, self.tmpdir, conf),
                                 self.tmpdir / "reference.out", cpu=self.proxy_cpu)  # fmt: skip
        self.servers.append(self.reference)
        self.reference.start()
        for case in cases:
            self.reference.wait_ready(case.port, self.args.start_timeout, templating.SMALL_BODY_SIZE)
        log(f"nginx (1 worker, CPU {self.proxy_cpu}) as the reference: {', '.join(c.name for c in cases)}")
        return cases

    def run_case(self, case: Case, seconds: int) -> tuple[float, float, int]:
        proxy = self.reference if case.proxy == "nginx" else self.proxy
        assert proxy is not None
        argv = wrkload.wrk_argv(self.wrk, f"http://{HOST}:{case.port}/small", duration_s=seconds,
                                connections=self.args.connections, headers=HEADERS, cpu=self.load_cpu)  # fmt: skip
        ticks = proxy.cpu_ticks()
        started = time.monotonic()
        result, _ = wrkload.run(argv, seconds)
        wall = time.monotonic() - started
        cpu = 100.0 * (proxy.cpu_ticks() - ticks) / CLOCK_TICKS / wall
        if not proxy.alive():
            raise StartError(f"{proxy.name} died during the run:\n{proxy.log_tail()}")
        return result.rps, cpu, result.errors

    def measure(self, cases: list[Case]) -> None:
        args = self.args
        if args.warmup:
            log(f"warming up ({args.warmup}s per case)")
            for case in cases:
                self.run_case(case, args.warmup)
        for rnd in range(args.rounds):
            shift = rnd % len(cases)
            order = cases[shift:] + cases[:shift]
            if rnd % 2:
                order.reverse()
            for case in order:
                time.sleep(args.pause)
                rps, cpu, errors = self.run_case(case, args.duration)
                case.rps.append(rps)
                case.cpu_pct.append(cpu)
                case.errors += errors
                note = f", {errors} errors" if errors else ""
                log(f"[round {rnd + 1}/{args.rounds}] {case.name:<16} {rps:>10,.0f} req/s  cpu {cpu:3.0f}%{note}")

    def stop(self) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                log(f"could not stop {server.name}: {exc}")


def report(cases: list[Case]) -> tuple[str, dict[str, Any]]:
    """Each proxy's cases against its own single-peer case, and each algorithm's cost beside
    nginx's for the same method."""
    bases = {c.proxy: c for c in cases if c.name in (BASELINE, NGINX_SINGLE)}

    def cost_of(case: Case) -> float:
        return 100.0 * (1.0 - case.median_rps / bases[case.proxy].median_rps)

    def paired_cost_of(case: Case) -> float:
        """The median over the rounds of each round's cost against the same round's baseline,
        measured within a minute of it: slow drifts of the machine cancel out."""
        base = bases[case.proxy]
        return statistics.median(100.0 * (1.0 - r / b) for r, b in zip(case.rps, base.rps, strict=True))

    by_name = {c.name: c for c in cases}
    nginx_cost = {
        algorithm: cost_of(by_name[name]) for algorithm, (name, _) in NGINX_METHODS.items() if name in by_name
    }
    header = (f"{'upstream':<22} {'peers':>5} {'req/s':>10} {'spread':>6} {'cost':>7} {'paired':>7} {'proxy cpu':>9} "
              f"{'req/cpu-s':>10} {'cost/cpu':>8} {'nginx':>7} {'beyond':>7}  "
              f"goal (cost <= {GOAL_COST_PCT:g} %)")  # fmt: skip
    lines = [header, "-" * len(header)]
    doc: dict[str, Any] = {"goal_cost_pct": GOAL_COST_PCT, "cases": {}}
    for case in cases:
        base = bases[case.proxy]
        cost = cost_of(case)
        cost_cpu = 100.0 * (1.0 - case.per_cpu_second / base.per_cpu_second)
        is_base = case is base
        same = nginx_cost.get(case.name) if case.proxy != "nginx" else None
        paired = None if is_base else paired_cost_of(case)
        if is_base:
            goal = "baseline"
        elif case.proxy == "nginx":
            goal = "reference"
        else:
            goal = "met" if cost <= GOAL_COST_PCT and not case.errors else "NOT MET"
        if case.errors:
            goal += f" ({case.errors} errors)"
        lines.append(
            f"{case.name:<22} {1 if is_base else PEERS:>5} {case.median_rps:>10,.0f} {case.spread_pct:>5.0f}% "
            f"{'-' if is_base else f'{cost:+.1f}%':>7} {'-' if paired is None else f'{paired:+.1f}%':>7} "
            f"{case.median_cpu:>8.0f}% {case.per_cpu_second:>10,.0f} "
            f"{'-' if is_base else f'{cost_cpu:+.1f}%':>8} {'-' if same is None else f'{same:+.1f}%':>7} "
            f"{'-' if same is None else f'{cost - same:+.1f}':>7}  {goal}"
        )
        doc["cases"][case.name] = {
            "proxy": case.proxy, "rps": case.rps, "cpu_pct": case.cpu_pct, "median_rps": case.median_rps,
            "requests_per_cpu_second": case.per_cpu_second, "errors": case.errors, "spread_pct": case.spread_pct,
            "cost_pct": None if is_base else round(cost, 2),
            "paired_cost_pct": None if paired is None else round(paired, 2),
            "cost_per_cpu_pct": None if is_base else round(cost_cpu, 2),
            "nginx_cost_pct": None if same is None else round(same, 2),
        }  # fmt: skip
    lines.append("")
    lines.append("cost: 1 - req/s / req/s of the same proxy's single-peer case (positive: slower); paired: the")
    lines.append("median of each round's cost against the same round's single-peer run; cost/cpu: the")
    lines.append("same on requests per proxy CPU-second, which does not depend on which side was the bottleneck.")
    lines.append("nginx: nginx's cost for the same method over the same backends (its rows below; `random two`")
    lines.append("is `random two least_conn`, `hash consistent` hashes X-User), the part that comes from spreading")
    lines.append("the load rather than from the proxy's choice; beyond: cost - nginx, in percentage points.")
    lines.append("spread: (highest - lowest) / median req/s of a case over the rounds, the run-to-run noise.")
    return "\n".join(lines), doc


def selection_us(balance: str | None, peers: int = PEERS, n: int = 20000) -> float:
    """Microseconds per request of the engine's balancing work for one upstream, best of 7 runs:
    select a peer, count it in flight and out again, record the outcome where the group learns
    from it (as Exchange does)."""
    sys.path.insert(0, str(REPO_ROOT))
    from portcullis.config.schema import Upstream
    from portcullis.engine.context import RequestContext
    from portcullis.upstream.group import Peer, UpstreamGroup
    from portcullis.upstream.pool import Pool

    spec: dict[str, Any] = {"peers": [{"url": f"http://{HOST}:{9000 + i}"} for i in range(peers)]}
    if balance is not None:
        spec["balance"] = balance
    if balance == "consistent_hash":
        spec["hash_key"] = "header:X-User"
    config = Upstream.model_validate(spec)
    group = UpstreamGroup("bench", config, [Peer(p.url, p.weight, Pool()) for p in config.peers])
    headers = [(b"Host", b"bench"), (b"User-Agent", b"wrk"), (b"X-User", b"bench-user")]
    ctx = RequestContext("GET", b"/small", headers, "1.1", "bench", HOST, 40000, "http", "web", 0.0)

    records = not group.simple and not group.trivial  # outcomes for a breaker or ejection
    averages = group.simple and group.tracks_latency  # only the latency average

    def requests() -> None:
        for _ in range(n):
            # the first try of a request, as engine/upstream_side.py picks it
            if (quick := group.quick) is not None:
                peer = quick()
            elif (keyed := group.keyed) is not None:
                peer = keyed(ctx)
            else:
                peer = group.select(ctx, ())
            assert peer is not None
            peer.active += 1
            peer.active -= 1
            if records:
                group.record(peer, True, 0.0005)
            elif averages:
                peer.observe_latency(0.0005)

    return min(timeit.repeat(requests, number=1, repeat=7)) / n * 1e6


def micro_report(cases: list[Case]) -> tuple[str, dict[str, Any]]:
    base = next((c for c in cases if c.name == BASELINE), None)
    per_request_us = 1e6 / base.per_cpu_second if base is not None else None
    single = selection_us(None, peers=1)
    lines = [f"balancing work per request, in-process (no I/O), against a single peer ({single:.2f} us):"]
    if per_request_us is not None:
        lines[0] += f"\nthe proxy's CPU per request through `single` above: {per_request_us:.1f} us"
    header = f"{'upstream':<16} {'us/request':>10} {'extra':>8} {'share of proxy CPU/request':>27}"
    lines += [header, "-" * len(header)]
    doc: dict[str, Any] = {"single_us": single, "proxy_cpu_us_per_request": per_request_us, "cases": {}}
    for algorithm in ALGORITHMS:
        us = selection_us(algorithm)
        extra = us - single
        share = f"{100.0 * extra / per_request_us:.1f} %" if per_request_us else "-"
        lines.append(f"{algorithm:<16} {us:>10.2f} {extra:>+8.2f} {share:>27}")
        doc["cases"][algorithm] = {"us": us, "extra_us": extra,
                                   "share_pct": 100.0 * extra / per_request_us if per_request_us else None}  # fmt: skip
    return "\n".join(lines), doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nginx, wrk = templating.find_nginx(), shutil.which("wrk")
    if nginx is None or wrk is None or (not args.no_pin and shutil.which("taskset") is None):
        log("missing nginx, wrk or taskset; on Debian: apt-get install -y nginx-light wrk util-linux")
        return 1
    busy = cpu_busy(1.0)
    noisy = {cpu: pct for cpu, pct in busy.items() if pct > 10.0}
    if noisy:
        log(f"warning: the machine is busy before the run ({noisy}); expect noisy numbers")
    tmpdir = Path(tempfile.mkdtemp(prefix="portcullis-balance-bench-"))
    bench = BalanceBench(args, tmpdir, nginx, wrk)
    status = 0
    cases: list[Case] = []
    try:
        cases = bench.start()
        log(f"{args.rounds} round(s) x {args.duration}s per case, wrk -t1 -c{args.connections}, GET /small")
        bench.measure(cases)
    except (StartError, wrkload.WrkError) as exc:
        log(f"error: {exc}")
        status = 1
    except KeyboardInterrupt:
        log("interrupted; stopping servers")
        status = 130
    finally:
        bench.stop()
        if status == 1:
            log(f"configs and logs kept in {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if status == 0 and cases:
        text, doc = report(cases)
        print(text)
        print()
        micro_text, doc["in_process"] = micro_report(cases)
        print(micro_text)
        doc["settings"] = {
            "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
            "proxy_cpu": bench.proxy_cpu, "load_cpu": bench.load_cpu, "cpu_busy_before": busy,
            "separate_backends": args.separate_backends,
        }  # fmt: skip
        if args.json is not None:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
