"""The watchdog's periodic upkeep: called every tick, and a failing one does not stop the clock."""

from __future__ import annotations

import asyncio

from portcullis.config.loader import load_config_text
from portcullis.engine.services import Services
from portcullis.engine.watchdog import TICK, Watchdog
from portcullis.worker.build import build_runtime

CONFIG = """
listeners:
  - {name: web, listen: "127.0.0.1:8080"}
upstreams:
  app: {balance: p2c_ewma, peers: [{url: "http://127.0.0.1:9"}, {url: "http://127.0.0.1:10"}]}
routes:
  - {name: all, match: {path_prefix: /}, upstream: app}
"""


def test_on_tick_runs_every_tick_and_survives_an_error() -> None:
    loop = asyncio.new_event_loop()
    calls: list[float] = []

    def upkeep(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("first tick fails")

    try:
        watchdog = Watchdog(loop)
        watchdog.on_tick = upkeep
        watchdog.start()
        loop.run_until_complete(asyncio.sleep(TICK * 3.5))
        watchdog.stop()
    finally:
        loop.close()
    assert len(calls) >= 2  # the failure on the first tick did not stop the second
    assert calls == sorted(calls)


def test_runtime_tick_fades_the_latency_of_a_quiet_peer() -> None:
    loop = asyncio.new_event_loop()
    try:
        runtime = build_runtime(load_config_text(CONFIG, "test.yaml", "."), Services(), Watchdog(loop))
    finally:
        loop.close()
    group = runtime.upstreams["app"]
    quiet, busy = group.peers
    runtime.tick(100.0)
    group.record(quiet, True, 0.5)
    group.record(busy, True, 0.5)
    for step in range(1, 81):  # twenty seconds of ticks; only `busy` keeps answering
        group.record(busy, True, 0.5)
        runtime.tick(100.0 + step * TICK)
    assert busy.ewma == 0.5
    assert quiet.ewma < 0.5 / 3  # about two half-lives
