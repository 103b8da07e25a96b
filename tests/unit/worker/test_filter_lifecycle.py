"""Filters are started before their config serves and closed when it is retired or drained."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from portcullis.config import load_config_text
from portcullis.engine.services import Services
from portcullis.features.actions.answer import RespondAction
from portcullis.worker.serve import Worker

CONFIG = """
listeners: [{name: web, listen: 127.0.0.1:1}]
routes:
  - name: hi
    filters: [{type: respond, body: "%s"}]
"""


def test_filters_start_before_serving_and_close_after(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, bytes]] = []

    async def start(self: RespondAction, services: Services) -> None:
        events.append(("start", self.body))

    async def close(self: RespondAction) -> None:
        events.append(("close", self.body))

    monkeypatch.setattr(RespondAction, "start", start)
    monkeypatch.setattr(RespondAction, "close", close)

    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        first = load_config_text(CONFIG % "one", "a.yaml", ".")
        worker = Worker(first, {"web": [sock]})
        await worker.start()
        assert events == [("start", b"one")]
        second: Any = load_config_text(CONFIG % "two", "b.yaml", ".").model_copy(
            update={"server": first.server.model_copy(update={"timeouts": first.server.timeouts.model_copy(
                update={"shutdown": 0.01})})}
        )  # fmt: skip
        await worker.swap(second, 2)
        assert events[1] == ("start", b"two")
        await asyncio.sleep(0.1)  # the old generation's filters close after the shutdown grace
        assert ("close", b"one") in events
        await worker.drain(0.1)
        assert events[-1] == ("close", b"two")

    asyncio.run(scenario())
