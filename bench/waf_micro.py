#!/usr/bin/env python3
"""CPU time the WAF filter spends on one request, in-process: no sockets, no load tool.

The CRS 3.3.4 rule set (paranoia 1, as `waf_bench.py`) is compiled once; then the `waf` filter's
request hooks (`on_request`, `on_request_body`) run on the same requests `waf_bench.py` sends:

    get     GET /search/items?q=blue+shoes&page=2&sort=price   (a clean query string)
    post    POST /submit, a 4 KiB application/x-www-form-urlencoded body (8 fields)
    attack  GET /?id=1' OR '1'='1 (blocked: a check, and the cost of a block)

Prints microseconds of CPU (time.process_time) per request, the best of `--repeat` runs, so
other load on the machine hardly moves it. `--profile` adds cProfile's top functions.

The rule set keeps results for values it has seen (bounded caches, see `features/waf/cache.py`),
and these requests repeat, like `waf_bench.py`'s `get` and `post`. `--distinct` makes every
argument value of every request new (a number in each, as `waf_bench.py`'s `get-distinct` and
`post-distinct`), which is the cost of values never seen before: the figure that counts.

    python3 bench/waf_micro.py
    python3 bench/waf_micro.py --distinct
    python3 bench/waf_micro.py --only post --profile

A measurement, not a test: compare two trees in the same conditions, a few runs each.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from waf_bench import CRS, GET_PATH, SITE, form_body  # noqa: E402

from portcullis.config.schema import WafFilter  # noqa: E402
from portcullis.engine.context import RequestContext  # noqa: E402
from portcullis.engine.services import Services  # noqa: E402
from portcullis.features.registry import build_filter  # noqa: E402
from portcullis.features.waf.filter import WafAction  # noqa: E402

HEADERS = [(b"Host", SITE.encode()), (b"User-Agent", b"waf-bench"), (b"Accept", b"*/*")]
ATTACK = b"/?id=1%27%20OR%20%271%27%3D%271"


def context(method: str, target: bytes, body: bytes) -> RequestContext:
    headers = list(HEADERS)
    if body:
        headers += [
            (b"Content-Length", str(len(body)).encode()),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
        ]
    ctx = RequestContext(
        method=method,
        target=target,
        headers=headers,
        version="1.1",
        host=SITE,
        client_ip="127.0.0.1",
        client_port=40000,
        scheme="http",
        listener="waf",
        started=0.0,
    )
    ctx.body_pending = bool(body)
    return ctx


def one(flt: WafAction, method: str, target: bytes, body: bytes) -> int:
    """A request through the filter's hooks; its status (200: passed)."""
    ctx = context(method, target, body)
    answer = flt.on_request(ctx)
    if answer is None and body:
        answer = flt.on_request_body(ctx, body, True)
    return 200 if answer is None else answer.status


CASES = {
    "get": ("GET", GET_PATH.encode(), b""),
    "post": ("POST", b"/submit", form_body().encode()),
    "attack": ("GET", ATTACK, b""),
}
EXPECTED = {"get": 200, "post": 200, "attack": 403}


_SERIAL = [0]


def distinct(name: str, count: int) -> list[tuple[str, bytes, bytes]]:
    """`count` variants of a case whose argument values were never seen before."""
    method, target, body = CASES[name]
    out = []
    for _ in range(count):
        _SERIAL[0] += 1
        n = str(_SERIAL[0]).encode()
        out.append((method, target.replace(b"=", b"=" + n), body.replace(b"=", b"=" + n)))
    return out


def measure(flt: WafAction, name: str, count: int, fresh: bool = False) -> float:
    requests = distinct(name, count) if fresh else [CASES[name]] * count
    start = time.process_time()
    for method, target, body in requests:
        one(flt, method, target, body)
    return (time.process_time() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best is printed")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="a case (repeatable)")
    parser.add_argument("--profile", action="store_true", help="cProfile one run per case")
    parser.add_argument("--paranoia", type=int, default=1)
    parser.add_argument("--distinct", action="store_true", help="new argument values in every request")
    args = parser.parse_args(argv)
    if not os.path.isdir(CRS):
        print("needs modsecurity-crs (scripts/test installs it)", file=sys.stderr)
        return 0
    started = time.process_time()
    config = WafFilter.model_validate({"type": "waf", "crs": CRS, "paranoia": args.paranoia, "mode": "block"})
    flt = build_filter(config, Services())
    assert isinstance(flt, WafAction)
    print(f"rule set compiled in {time.process_time() - started:.2f} s CPU", file=sys.stderr)
    names = args.only or list(CASES)
    for name in names:
        status = one(flt, *CASES[name])
        if status != EXPECTED[name]:
            print(f"check failed: {name} answered {status}, expected {EXPECTED[name]}", file=sys.stderr)
            return 1
    values = "distinct argument values" if args.distinct else "repeated requests"
    print(
        f"WAF filter, CRS 3.3.4 paranoia {args.paranoia}, {values}: CPU us per request"
        f" (best of {args.repeat} x {args.count})"
    )
    for name in names:
        measure(flt, name, max(args.count // 10, 1), args.distinct)  # warm up, as a server would be
        best = min(measure(flt, name, args.count, args.distinct) for _ in range(args.repeat))
        print(f"{name:8s} {best:9.1f}")
    if args.profile:
        for name in names:
            profiler = cProfile.Profile()
            profiler.enable()
            measure(flt, name, args.count, args.distinct)
            profiler.disable()
            print(f"\n--- profile: {name} ({args.count} requests)")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
