#!/usr/bin/env python3
"""TLS and HTTP/2 termination: Portcullis against nginx with the same certificate, same run.

Starts a backend nginx (bench/templates/backend.conf), nginx as the reference TLS proxy
(ssl + http2, keep-alive upstream) and Portcullis (one worker, a TLS listener offering h2
and http/1.1), both with one ECDSA P-256 certificate made here with trustme, and measures
in interleaved rounds:

    handshake   full TLS handshakes per second: 4 `openssl s_time -new` at once (no session
                reuse), one GET per connection
    keepalive   requests/s over TLS keep-alive connections: `wrk -c32` on /small (100 bytes)
    h2          requests/s over HTTP/2: `h2load -c16 -m10` on /small (Debian's nghttp2-client)

and prints each figure with its ratio to nginx (issue 4's goals: handshake >= 0.7,
h2 >= 0.35). Like bench/run.py it is a measurement, not a test: exit 0 when it ran.

    python3 bench/tls_bench.py                 # 3 rounds of 5 s per case
    python3 bench/tls_bench.py --quick         # 1 round of 3 s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import templating
import wrkload
from procs import Managed, StartError, checkout_env, free_port, taskset_prefix

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
GOALS = {"handshake": 0.7, "h2": 0.35}

NGINX_TLS = """
worker_processes 1;
{{user}}
pid {{tmpdir}}/nginx-tls.pid;
error_log {{tmpdir}}/nginx-tls-error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
{{temp_paths}}
    upstream backend { server 127.0.0.1:{{backend_port}}; keepalive 64; }
    server {
        listen 127.0.0.1:{{port}} ssl http2 backlog=4096;
        ssl_certificate {{cert}};
        ssl_certificate_key {{key}};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        keepalive_requests 10000000;
        http2_max_requests 10000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def s_time(port: int, seconds: int, cpu: int | None, clients: int = 1) -> float:
    """Full handshakes per second (each with one small request), as `openssl s_time -new` counts
    them, summed over `clients` processes running at once (one alone measures latency, not rate)."""
    argv = [*taskset_prefix(cpu), "openssl", "s_time", "-connect", f"{HOST}:{port}", "-new", "-time", str(seconds),
            "-www", "/small"]  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 30)
        m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
        if m is None:
            raise StartError(f"openssl s_time gave no figure:\n{out}{err}")
        total += int(m.group(1)) / float(m.group(2))
    return total


def h2load(port: int, seconds: int, cpu: int | None) -> tuple[float, int]:
    # -n scaled to the duration asked for (h2load's -D stops early when a connection is closed)
    argv = [*taskset_prefix(cpu), "h2load", "-c16", "-m10", "-t1", f"-n{seconds * 8000}", f"https://{HOST}:{port}/small"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
    lines = [line.strip() for line in done.stdout.splitlines() if line.startswith(("finished", "requests:"))]
    log("  " + " | ".join(lines))
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", done.stdout)
    if m is None:
        raise StartError(f"h2load gave no figure:\n{done.stdout}{done.stderr}")
    return float(m.group(1)), int(failed.group(1)) if failed else 0


class TlsBench:
    def __init__(self, args: argparse.Namespace, tmpdir: Path, nginx: str, wrk: str) -> None:
        self.args = args
        self.tmpdir = tmpdir
        self.nginx = nginx
        self.wrk = wrk
        self.build_info = templating.nginx_build_info(nginx)
        pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
        self.proxy_cpu = 0 if pin else None
        self.load_cpu = 1 if pin else None
        self.servers: list[Managed] = []
        self.ports: dict[str, int] = {}

    def _cert(self) -> tuple[str, str]:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("bench.test", "127.0.0.1", key_type=trustme.KeyType.ECDSA)
        cert, key = self.tmpdir / "bench.pem", self.tmpdir / "bench.key"
        cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return str(cert), str(key)

    def start(self) -> None:
        values = templating.nginx_values(self.build_info, self.tmpdir)
        docroot = self.tmpdir / "www"
        docroot.mkdir(exist_ok=True)
        backend_port = free_port()
        conf = self.tmpdir / "backend.conf"
        conf.write_text(templating.render_file("backend.conf", {
            **values, "port": str(backend_port), "docroot": str(docroot), "small_body": templating.small_body(),
        }))  # fmt: skip
        backend = Managed("backend", templating.nginx_argv(self.nginx, self.tmpdir, conf), self.tmpdir / "backend.out",
                          cpu=self.load_cpu)  # fmt: skip
        self.servers.append(backend)
        backend.start()
        backend.wait_ready(backend_port, 15, templating.SMALL_BODY_SIZE)
        cert, key = self._cert()

        port = self.ports["nginx"] = free_port()
        conf = self.tmpdir / "nginx-tls.conf"
        conf.write_text(templating.render(NGINX_TLS, {
            **values, "port": str(port), "backend_port": str(backend_port), "cert": cert, "key": key,
        }))  # fmt: skip
        ngx = Managed("nginx", templating.nginx_argv(self.nginx, self.tmpdir, conf), self.tmpdir / "nginx.out",
                      cpu=self.proxy_cpu)  # fmt: skip
        self.servers.append(ngx)
        ngx.start()

        port = self.ports["portcullis"] = free_port()
        config = {
            "workers": 1,
            "listeners": [{"name": "tls", "listen": f"{HOST}:{port}",
                           "tls": {"certificates": [{"cert": cert, "key": key}]}}],
            "upstreams": {"backend": {"peers": [{"url": f"http://{HOST}:{backend_port}"}]}},
            "routes": [{"name": "all", "upstream": "backend"}],
        }  # fmt: skip
        path = self.tmpdir / "portcullis.yaml"
        path.write_text(json.dumps(config, indent=2))
        env = checkout_env()
        proxy = Managed("portcullis", [sys.executable, "-m", "portcullis", "run", "-c", str(path)],
                        self.tmpdir / "portcullis.out", cpu=self.proxy_cpu, cwd=REPO_ROOT, env=env)  # fmt: skip
        self.servers.append(proxy)
        proxy.start()
        for name in ("nginx", "portcullis"):
            self._wait_tls(name, self.ports[name])
        log(f"nginx on {self.ports['nginx']}, portcullis on {self.ports['portcullis']} (CPU {self.proxy_cpu})")

    def _wait_tls(self, name: str, port: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if s_time(port, 1, None) > 0:
                    return
            except (StartError, subprocess.TimeoutExpired):
                time.sleep(0.2)
        server = next(s for s in self.servers if s.name == name)
        raise StartError(f"{name} does not answer TLS on {port}:\n{server.log_tail()}")

    def run(self, target: str, case: str, seconds: int) -> float:
        port = self.ports[target]
        if case == "handshake":
            return s_time(port, seconds, self.load_cpu, self.args.handshake_clients)
        if case == "keepalive":
            argv = wrkload.wrk_argv(self.wrk, f"https://{HOST}:{port}/small", duration_s=seconds,
                                    connections=32, cpu=self.load_cpu)  # fmt: skip
            result, _ = wrkload.run(argv, seconds)
            return result.rps
        rps, failed = h2load(port, seconds, self.load_cpu)
        if failed:
            log(f"  h2load: {failed} requests failed against {target}")
        return rps

    def stop(self) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                log(f"could not stop {server.name}: {exc}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1 round of 3 s")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxies and the load to CPUs")
    p.add_argument("--cases", default="handshake,keepalive,h2")
    p.add_argument("--handshake-clients", type=int, default=4, help="openssl s_time processes at once")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3
    nginx, wrk = templating.find_nginx(), shutil.which("wrk")
    missing = [n for n, v in (("nginx", nginx), ("wrk", wrk), ("openssl", shutil.which("openssl")),
                              ("h2load", shutil.which("h2load"))) if not v]  # fmt: skip
    if missing or nginx is None or wrk is None:
        log(f"missing: {', '.join(missing)} (apt-get install nginx-light wrk openssl nghttp2-client)")
        return 1
    cases = [c for c in args.cases.split(",") if c]
    figures: dict[str, dict[str, list[float]]] = {c: {"nginx": [], "portcullis": []} for c in cases}
    with tempfile.TemporaryDirectory(prefix="portcullis-tls-bench-") as tmp:
        bench = TlsBench(args, Path(tmp), nginx, wrk)
        try:
            bench.start()
            for rnd in range(args.rounds):
                for case in cases:
                    order = ["nginx", "portcullis"] if rnd % 2 == 0 else ["portcullis", "nginx"]
                    for target in order:
                        time.sleep(0.5)
                        value = bench.run(target, case, args.duration)
                        figures[case][target].append(value)
                        log(f"[round {rnd + 1}/{args.rounds}] {case:<10} {target:<10} {value:>10,.0f}/s")
        except StartError as exc:
            log(f"error: {exc}")
            return 1
        finally:
            bench.stop()
    out: dict[str, Any] = {}
    print(f"{'case':<10} {'nginx':>12} {'portcullis':>12} {'ratio':>7}  goal")
    for case in cases:
        n = statistics.median(figures[case]["nginx"])
        p = statistics.median(figures[case]["portcullis"])
        ratio = p / n if n else 0.0
        goal = GOALS.get(case)
        mark = "" if goal is None else (f">= {goal}: " + ("met" if ratio >= goal else "NOT met"))
        unit = "handshakes/s" if case == "handshake" else "req/s"
        print(f"{case:<10} {n:>12,.0f} {p:>12,.0f} {ratio:>7.2f}  {mark}  ({unit}, median of {args.rounds})")
        out[case] = {"nginx": n, "portcullis": p, "ratio": ratio, "goal": goal, "rounds": figures[case]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
