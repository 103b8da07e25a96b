"""Small writes of one turn of the event loop, sent together at its end.

A write to a loopback socket wakes its reader, and when the reader's CPU has gone idle that
wake-up is an interrupt between CPUs, which costs a virtual machine microseconds. A turn of
the loop under load handles a dozen requests: sending their writes back to back, after the
turn's callbacks, wakes the other side once for many of them rather than once for each
(+10 % requests/s on small keep-alive responses, on a 2-vCPU VM). Both sides must be held:
holding only the client's writes or only the upstream's gained nothing, since the other
side's writes still woke the other CPU all through the turn.

Only under load: a turn with few writes has nothing to gather, and holding them would only
delay them, so writes are held in a turn only when the turn before had at least HOLD_FROM. A
connection keeps its held pieces itself, in order, and puts itself here once per turn
(`Holder`); the outbox calls `send_held` on each from a `call_soon` callback, which the loop
runs after the turn's I/O callbacks. A connection sends what it holds before anything that
must follow it: a large piece (written at once, not copied), a close, a tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from mypy_extensions import trait

log = logging.getLogger("portcullis")


class Holder(Protocol):
    def send_held(self) -> None: ...


HOLD_FROM = 8
"""Writes in a turn from which the next turn's writes are held. A turn with fewer has little to
gather, and holding would only delay: with a new connection per request (a few writes a turn),
holding from 4 writes cost 5 % of requests/s, from 8 about nothing."""


class Outbox:
    __slots__ = ("_holders", "_loop", "_scheduled", "_writes", "holding")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._holders: list[Holder] = []
        self._scheduled = False
        self._writes = 0
        self.holding = False
        """Whether writes of this turn are held: the last turn had at least HOLD_FROM."""

    def wrote(self) -> None:
        """A write went out at once: counted, to know whether the next turn should hold."""
        self._writes += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def hold(self, holder: Holder) -> None:
        """`holder` has pieces to send at the end of this turn (call once per turn, when its
        first piece is held)."""
        self._holders.append(holder)
        self.wrote()  # counted like a write, and the turn's end is marked the same way

    def flush(self) -> None:
        """The end of a turn: send everything held (the loop calls this; tests without a running
        loop may too)."""
        self._scheduled = False
        self.holding = self._writes >= HOLD_FROM
        self._writes = 0
        holders, self._holders = self._holders, []
        for holder in holders:
            try:
                holder.send_held()
            except Exception:  # one connection's failure must not keep the others' bytes
                log.exception("sending held bytes failed")


HOLD_BELOW = 16 * 1024
"""Larger pieces are written at once (after what is held), not held and copied for the turn."""


@trait  # a mixin: compiled classes have one base class and any number of traits
class HeldWrites:
    """The writes of a connection whose small pieces an `Outbox` may hold until the end of the
    turn. The connection provides the `_held` and `_outbox` slots and its `transport` (the slots
    cannot be here: the HTTP/1.1 connection has another slotted base)."""

    __slots__ = ()
    _held: list[bytes] | None
    _outbox: Outbox
    transport: Any

    def _put(self, data: bytes) -> None:
        held = self._held
        outbox = self._outbox
        if len(data) < HOLD_BELOW:
            if held is not None:
                held.append(data)
                return
            if outbox.holding:
                self._held = [data]  # type: ignore[misc]  # a slot of the connection's class
                outbox.hold(self)
                return
        if held is not None:
            self.send_held()
        else:
            outbox.wrote()
        self.transport.write(data)

    def send_held(self) -> None:
        """Send what is held, in one send, unless the transport is gone or going."""
        held = self._held
        if held is not None:
            self._held = None  # type: ignore[misc]  # a slot of the connection's class
            transport = self.transport
            if transport is not None and not transport.is_closing():
                if len(held) == 1:
                    transport.write(held[0])
                else:
                    transport.writelines(held)
