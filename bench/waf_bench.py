#!/usr/bin/env python3
"""What the WAF costs: requests/s through a Portcullis route with `{type: waf}` (CRS 3.3.4 at
paranoia 1) against the same route without it, in one run (issue 6: a ratio of at least 0.25).

One Portcullis process (one worker) gets two listeners, `plain` and `waf`, each with one route
to the same nginx upstream (a fixed 2-byte answer). Four workloads, each run on both listeners
in alternating rounds with wrk over keep-alive:

    get            GET /search/items?q=blue+shoes&page=2&sort=price   (a clean query string)
    post           POST /submit with a 4 KiB application/x-www-form-urlencoded body (8 fields)
    get-distinct   the same GET, a request counter in every query value (`q=17blue+shoes` ...)
    post-distinct  the same POST, a request counter in every form field

`get` and `post` repeat one request, so the WAF mostly finds its results in its caches (values
it has seen: see features/waf/cache.py). In the `-distinct` workloads no two requests carry the
same argument values, while the headers stay the same, as a browser's would: that is what most
real traffic looks like, and the figure that counts.

It first checks that the WAF listener answers 403 to `?id=1' OR '1'='1` and the plain one 200.
Like the other benchmarks this is a measurement, not a test: it exits 0 when it ran.

    python3 bench/waf_bench.py                 # 3 rounds of 5 s per case
    python3 bench/waf_bench.py --quick         # 1 round of 3 s
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import wrkload
import yaml
from procs import CLOCK_TICKS, Managed, StartError, cpu_ticks, free_port, process_tree

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
CRS = "/usr/share/modsecurity-crs"
GET_PATH = "/search/items?q=blue+shoes&page=2&sort=price"
SITE = "shop.example"
"""The Host of every request: a site's name, as browsers send it. (With the listener's IP
address the CRS scores every request a warning, 920350, and the GET is no longer clean.)"""
FIELDS = 8
WORKLOADS = ("get", "post", "get-distinct", "post-distinct")


def form_body(size: int = 4096) -> str:
    per = size // FIELDS
    parts = []
    for i in range(FIELDS):
        prefix = f"field{i}="
        text = ("ordinary+words+in+a+form+" * 40)[: per - len(prefix) - 1]
        parts.append(prefix + text)
    return "&".join(parts)[:size]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def nginx_conf(tmpdir: Path, port: int) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {tmpdir}/nginx.pid;
error_log {tmpdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmpdir}/cb; proxy_temp_path {tmpdir}/px; fastcgi_temp_path {tmpdir}/fc;
    uwsgi_temp_path {tmpdir}/uw; scgi_temp_path {tmpdir}/sc;
    server {{
        listen {HOST}:{port};
        keepalive_requests 1000000;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def portcullis_config(plain: int, waf: int, upstream: int) -> dict[str, Any]:
    return {
        "workers": 1,
        "listeners": [{"name": "plain", "listen": f"{HOST}:{plain}"}, {"name": "waf", "listen": f"{HOST}:{waf}"}],
        "upstreams": {"app": {"peers": [{"url": f"http://{HOST}:{upstream}"}]}},
        "routes": [
            {"name": "plain", "listeners": ["plain"], "match": {"path_prefix": "/"}, "upstream": "app"},
            {
                "name": "waf",
                "listeners": ["waf"],
                "match": {"path_prefix": "/"},
                "filters": [{"type": "waf", "crs": CRS, "paranoia": 1, "mode": "block"}],
                "upstream": "app",
            },
        ],
    }


def status_of(port: int, method: str, path: str, body: str | None = None) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Host": SITE, "User-Agent": "waf-bench", "Accept": "*/*"}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status_of(port, "GET", "/")
            return
        except OSError:
            time.sleep(0.2)
    raise StartError(f"nothing answers on port {port}")


def proxy_ticks(proxy: Managed) -> int:
    return sum(cpu_ticks(pid) for pid in process_tree(proxy.pid))


def _lua_text(text: str) -> str:
    """`text` as a Lua expression with the request counter `n` after every `=`."""
    pieces = text.split("=")
    return " .. n .. ".join('"' + piece + ("=" if i < len(pieces) - 1 else "") + '"' for i, piece in enumerate(pieces))


def lua_scripts(tmpdir: Path, body: str) -> dict[str, Path]:
    """The wrk scripts of the workloads that need one. The counter is per wrk thread (one: -t1)."""
    scripts = {
        "post": f'wrk.method = "POST"\nwrk.body = "{body}"\n',
        "get-distinct": f'local n = 0\nrequest = function()\n  n = n + 1\n'
        f'  return wrk.format("GET", {_lua_text(GET_PATH)})\nend\n',
        "post-distinct": f'local n = 0\nrequest = function()\n  n = n + 1\n'
        f'  return wrk.format("POST", "/submit", nil, {_lua_text(body)})\nend\n',
    }
    paths: dict[str, Path] = {}
    for name, text in scripts.items():
        if name.startswith("post"):
            text = 'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' + text
        paths[name] = tmpdir / f"{name}.lua"
        paths[name].write_text(text)
    return paths


def wrk_run(
    wrk: str, port: int, workload: str, scripts: dict[str, Path], duration: int, connections: int
) -> tuple[float, int]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout=10s", "--latency",
            "-H", f"Host: {SITE}", "-H", "User-Agent: waf-bench", "-H", "Accept: */*"]  # fmt: skip
    if workload in scripts:
        argv += ["-s", str(scripts[workload])]
    # the URL gives wrk its host and port (and the path of the plain GET); a script sets the rest
    url = f"http://{HOST}:{port}{GET_PATH}" if workload == "get" else f"http://{HOST}:{port}/submit"
    result, _ = wrkload.run([*argv, url], duration)
    if result.errors:
        log(f"  wrk reported {result.errors} errors on {workload}@{port}")
    return float(result.rps), int(result.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk")
    if not wrk or not os.path.exists(nginx) or not os.path.isdir(CRS):
        log("needs nginx, wrk and modsecurity-crs (scripts/test installs them)")
        return 0
    with tempfile.TemporaryDirectory(prefix="waf-bench-") as tmp:
        tmpdir = Path(tmp)
        up_port, plain_port, waf_port = free_port(), free_port(), free_port()
        (tmpdir / "nginx.conf").write_text(nginx_conf(tmpdir, up_port))
        (tmpdir / "portcullis.yaml").write_text(yaml.safe_dump(portcullis_config(plain_port, waf_port, up_port)))
        body = form_body()
        scripts = lua_scripts(tmpdir, body)
        upstream = Managed("nginx", [nginx, "-c", str(tmpdir / "nginx.conf")], tmpdir / "nginx.log")
        proxy = Managed(
            "portcullis",
            [sys.executable, "-m", "portcullis", "run", "-c", str(tmpdir / "portcullis.yaml")],
            tmpdir / "portcullis.log",
            cwd=REPO_ROOT,
        )
        upstream.start()
        proxy.start()
        try:
            wait_port(up_port, 10)
            wait_port(plain_port, 60)
            wait_port(waf_port, 60)
            attack = "/?id=1%27%20OR%20%271%27%3D%271"
            checks = {
                "waf blocks an attack": status_of(waf_port, "GET", attack) == 403,
                "plain passes it": status_of(plain_port, "GET", attack) == 200,
                "waf passes the clean GET": status_of(waf_port, "GET", GET_PATH) == 200,
                "waf passes the clean POST": status_of(waf_port, "POST", "/submit", body) == 200,
            }
            for name, ok in checks.items():
                log(f"check: {name}: {'ok' if ok else 'FAILED'}")
            rates: dict[tuple[str, str], list[float]] = {}
            cpu_us: dict[tuple[str, str], list[float]] = {}
            for round_no in range(args.rounds):
                for workload in WORKLOADS:
                    order = [("plain", plain_port), ("waf", waf_port)]
                    if round_no % 2:
                        order.reverse()
                    for name, port in order:
                        before = proxy_ticks(proxy)
                        rps, count = wrk_run(wrk, port, workload, scripts, args.duration, args.connections)
                        per_request = (proxy_ticks(proxy) - before) / CLOCK_TICKS / max(count, 1) * 1e6
                        rates.setdefault((workload, name), []).append(rps)
                        cpu_us.setdefault((workload, name), []).append(per_request)
                        log(
                            f"round {round_no + 1} {workload:13s} {name:5s} {rps:9.0f} req/s,"
                            f" {per_request:.1f} us CPU"
                        )
            print(f"\nWAF cost, CRS 3.3.4 paranoia 1, {args.rounds} round(s) of {args.duration}s, median req/s")
            print("(and the proxy's CPU time per request, which other load on the machine hardly moves)")
            print(
                f"{'workload':14s} {'no WAF':>10s} {'WAF':>10s} {'ratio':>7s}"
                f" {'CPU us/req':>12s} {'WAF':>8s} {'ratio':>7s}"
            )
            for workload in WORKLOADS:
                plain = statistics.median(rates[(workload, "plain")])
                waf = statistics.median(rates[(workload, "waf")])
                plain_cpu = statistics.median(cpu_us[(workload, "plain")])
                waf_cpu = statistics.median(cpu_us[(workload, "waf")])
                print(
                    f"{workload:14s} {plain:10.0f} {waf:10.0f} {waf / plain:7.3f}"
                    f" {plain_cpu:12.1f} {waf_cpu:8.1f} {plain_cpu / waf_cpu:7.3f}"
                )
        finally:
            proxy.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
