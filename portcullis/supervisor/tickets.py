"""Session-ticket secrets, made and rotated by the master for every TLS listener.

Each listener with `tls.session_tickets` has a current secret (it encrypts new tickets) and,
after its first rotation, the previous one (it still decrypts). Every `rotate` the current one
becomes the previous one and the oldest is dropped, so a ticket is good for one to two intervals.
Workers get the secrets in their config message and again after every rotation; they derive the
actual keys (portcullis.tls.tickets). A reload keeps the secrets of listeners it keeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portcullis.config.schema import Config

SECRET_BYTES = 32
KEPT = 2  # the current secret and the previous one


def _intervals(config: Config) -> dict[str, float]:
    return {
        lst.name: lst.tls.session_tickets.rotate
        for lst in config.listeners
        if lst.tls is not None and lst.tls.session_tickets is not None
    }


@dataclass(slots=True)
class _Secrets:
    keys: list[bytes]
    rotated_at: float
    """Monotonic time of the last rotation (or of creation)."""
    rotated_wall: float
    rotations: int = 0


class TicketRotation:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._listeners: dict[str, _Secrets] = {}

    def ensure(self, config: Config) -> None:
        """Secrets for every listener of `config` that has none yet; existing ones are kept."""
        for name in _intervals(config):
            if name not in self._listeners:
                self._listeners[name] = _Secrets([os.urandom(SECRET_BYTES)], self._clock(), time.time())

    def prune(self, config: Config) -> None:
        """Forget the listeners `config` no longer has (once it serves)."""
        keep = _intervals(config)
        for name in [n for n in self._listeners if n not in keep]:
            del self._listeners[name]

    def message(self) -> dict[str, list[str]]:
        """The `tickets` field of a control message: each listener's secrets, newest first."""
        return {name: [key.hex() for key in s.keys] for name, s in self._listeners.items()}

    def next_due(self, config: Config) -> float | None:
        """When the next rotation is due (monotonic clock), or None when no listener has tickets."""
        due = [self._listeners[n].rotated_at + every for n, every in _intervals(config).items() if n in self._listeners]
        return min(due) if due else None

    def rotate_due(self, config: Config) -> list[str]:
        """Rotate every listener whose interval has passed; the names rotated."""
        now = self._clock()
        rotated = []
        for name, every in _intervals(config).items():
            state = self._listeners.get(name)
            if state is not None and now >= state.rotated_at + every:
                state.keys = [os.urandom(SECRET_BYTES), *state.keys][:KEPT]
                state.rotated_at, state.rotated_wall = now, time.time()
                state.rotations += 1
                rotated.append(name)
        return rotated

    def describe(self, name: str) -> dict[str, Any] | None:
        """For the admin API: how many rotations and when the last one was."""
        state = self._listeners.get(name)
        if state is None:
            return None
        return {
            "rotations": state.rotations,
            "rotated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.rotated_wall)),
            "keys": len(state.keys),
        }
