"""Small writes are held until the end of the loop's turn, in order, and nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from portcullis.engine.outbox import HOLD_FROM, Outbox
from portcullis.server.h1 import H1Connection
from tests.unit.server.transports import Transport, runtime_with_pooled_upstream

GET = b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n"


class Holder:
    def __init__(self, name: str, sent: list[str], fail: bool = False) -> None:
        self.name, self.sent, self.fail = name, sent, fail

    def send_held(self) -> None:
        if self.fail:
            raise RuntimeError("broken")
        self.sent.append(self.name)


def test_holders_are_sent_in_order_once_the_turn_ends() -> None:
    async def main() -> list[str]:
        outbox = Outbox(asyncio.get_running_loop())
        sent: list[str] = []
        outbox.hold(Holder("a", sent))
        outbox.hold(Holder("b", sent))
        assert sent == []  # nothing during the turn
        await asyncio.sleep(0)
        first = list(sent)
        outbox.hold(Holder("c", sent))  # a later turn is scheduled again
        await asyncio.sleep(0)
        return [*first, "|", *sent]

    assert asyncio.run(main()) == ["a", "b", "|", "a", "b", "c"]


def test_a_busy_turn_makes_the_next_one_hold_and_a_quiet_one_stops_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        outbox = Outbox(loop)
        assert not outbox.holding  # an idle proxy writes at once
        for _ in range(HOLD_FROM):
            outbox.wrote()
        outbox.flush()
        assert outbox.holding
        outbox.hold(Holder("a", []))
        outbox.flush()
        assert not outbox.holding  # one writer in that turn: the next writes at once again
    finally:
        loop.close()


def test_a_failing_holder_does_not_keep_the_others_bytes(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        outbox = Outbox(loop)
        sent: list[str] = []
        outbox.hold(Holder("a", sent, fail=True))
        outbox.hold(Holder("b", sent))
        outbox.flush()
        assert sent == ["b"]
        assert "sending held bytes failed" in caplog.text
    finally:
        loop.close()


class Setup:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runtime, self.upstream, self.upstream_transport = runtime_with_pooled_upstream(self.loop)
        self.client = Transport(("127.0.0.1", 40000))
        self.conn = H1Connection(self.runtime, self.runtime.listeners["web"])
        self.conn.connection_made(self.client)  # type: ignore[arg-type]

    def end_of_turn(self) -> None:
        """The end of a turn of a busy loop: the next turn holds too."""
        outbox = self.runtime.watchdog.outbox
        outbox.flush()
        outbox.holding = True


@pytest.fixture
def setup() -> Any:
    s = Setup()
    s.runtime.watchdog.outbox.holding = True  # as under load
    yield s
    s.loop.close()


def test_a_response_is_written_at_the_end_of_the_turn(setup: Setup) -> None:
    setup.conn.data_received(GET)
    assert setup.upstream_transport.written == []  # the request head waits for the turn's end
    setup.end_of_turn()
    assert setup.upstream_transport.written[0].startswith(b"GET /x HTTP/1.1\r\n")
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert setup.client.written == []
    setup.end_of_turn()
    assert len(setup.client.written) == 1 and setup.client.written[0].endswith(b"\r\n\r\nok")


def test_pipelined_responses_of_one_turn_leave_together_in_order(setup: Setup) -> None:
    setup.conn.data_received(GET.replace(b"/x", b"/one") + GET.replace(b"/x", b"/two"))
    setup.end_of_turn()
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    setup.end_of_turn()  # the second request goes out once the first is answered
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    setup.end_of_turn()
    out = b"".join(setup.client.written)
    assert out.index(b"\r\n\r\none") < out.index(b"\r\n\r\ntwo")


def test_a_large_piece_goes_out_after_what_is_held(setup: Setup) -> None:
    setup.conn.data_received(GET)
    setup.end_of_turn()
    big = b"x" * (64 * 1024)
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    setup.upstream.data_received(b"%x\r\n" % len(big) + big + b"\r\n")  # same turn: written at once
    out = b"".join(setup.client.written)
    assert out.index(b"3\r\nabc\r\n") < out.index(big)


def test_a_closing_connection_sends_what_it_holds_then_closes(setup: Setup) -> None:
    events: list[str] = []
    write, close = setup.client.write, setup.client.close
    setup.client.write = lambda data: (events.append("write"), write(data))  # type: ignore[method-assign]
    setup.client.close = lambda: (events.append("close"), close())  # type: ignore[method-assign]
    setup.conn.data_received(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    setup.end_of_turn()
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert events == ["write", "close"]
    assert b"".join(setup.client.written).endswith(b"ok")


def test_an_idle_proxy_writes_at_once(setup: Setup) -> None:
    setup.runtime.watchdog.outbox.holding = False
    setup.conn.data_received(GET)
    assert setup.upstream_transport.written[0].startswith(b"GET /x HTTP/1.1\r\n")
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert b"".join(setup.client.written).endswith(b"\r\n\r\nok")


def test_nothing_is_written_after_the_client_is_gone(setup: Setup) -> None:
    setup.conn.data_received(GET)
    setup.end_of_turn()
    setup.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    setup.conn.connection_lost(ConnectionResetError())
    setup.end_of_turn()
    assert setup.client.written == []
