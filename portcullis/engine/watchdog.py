"""A coarse clock for every timeout in a worker.

Connections keep a `deadline` (0 means none) and the watchdog checks them four times a second.
Setting an attribute per request is far cheaper than arming and cancelling a timer handle per
request, and a quarter-second of slack is fine for timeouts counted in seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from portcullis.engine.outbox import Outbox

TICK = 0.25


class Timed(Protocol):
    deadline: float

    def on_deadline(self) -> None: ...


class Watchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = loop.time()
        self.watched: set[Timed] = set()
        """Everything with a deadline; `watch` and `unwatch`, or add and discard directly on a hot path."""
        self._handle: asyncio.TimerHandle | None = None
        self.on_tick: Callable[[float], None] | None = None
        """Periodic upkeep that must stay off the request path, called with the time of each tick."""
        self.outbox = Outbox(loop)
        """The worker's other per-loop service: small writes sent at the end of each turn (outbox.py)."""

    def start(self) -> None:
        self._handle = self.loop.call_later(TICK, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def watch(self, item: Timed) -> None:
        self.watched.add(item)

    def unwatch(self, item: Timed) -> None:
        self.watched.discard(item)

    def _tick(self) -> None:
        self.now = now = self.loop.time()
        expired = [item for item in self.watched if 0 < item.deadline <= now]
        for item in expired:
            item.deadline = 0.0
            try:
                item.on_deadline()
            except Exception:  # a timeout handler must never stop the clock
                logging.getLogger("portcullis").exception("deadline handler failed")
        if self.on_tick is not None:
            try:
                self.on_tick(now)
            except Exception:
                logging.getLogger("portcullis").exception("periodic upkeep failed")
        self._handle = self.loop.call_later(TICK, self._tick)
