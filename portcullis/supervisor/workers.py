"""The master's handle on one worker process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from portcullis.supervisor.control import Channel

if TYPE_CHECKING:
    from portcullis.supervisor.master import Master

log = logging.getLogger("portcullis")
_ids = itertools.count(1)


class WorkerHandle:
    def __init__(self, master: Master, index: int) -> None:
        self.master = master
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.generation = 0
        self.error: str | None = None
        self._changed = asyncio.Condition()
        self._stats: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def spawn(self, sockets: dict[str, list[socket.socket]], config_message: dict[str, Any]) -> None:
        parent, child = socket.socketpair()
        args = [sys.executable, "-m", "portcullis.worker.process", "--control", str(child.fileno())]
        args += ["--index", str(self.index)]
        for name, group in sockets.items():
            args += ["--listener", f"{name}={','.join(str(sock.fileno()) for sock in group)}"]
        self.process = await asyncio.create_subprocess_exec(
            *args,
            pass_fds=[child.fileno(), *(sock.fileno() for group in sockets.values() for sock in group)],
            stdin=subprocess.DEVNULL,
            env=_worker_environment(),
        )
        child.close()
        self.channel = await Channel.open(parent)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]
        await self.channel.send(self._with_tickets(config_message))
        for message in self.master.health_messages():
            await self.channel.send(message)

    async def _read(self) -> None:
        assert self.channel is not None
        while True:
            message = await self.channel.receive()
            if message is None:
                return
            kind = message.get("type")
            if kind in ("ready", "error"):
                async with self._changed:
                    if kind == "ready":
                        self.generation = int(message["generation"])
                        self.error = None
                    else:
                        self.error = str(message.get("error"))
                    self._changed.notify_all()
            elif kind == "stats":
                future = self._stats.pop(int(message["id"]), None)
                if future is not None and not future.done():
                    future.set_result(message["data"])

    async def _watch(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        # its last messages (why it refused a configuration) are read before its exit is reported
        await asyncio.wait(self._tasks[:1], timeout=1.0)
        async with self._changed:
            self._changed.notify_all()
        self.master.worker_died(self, code)

    async def wait_ready(self, generation: int) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.generation >= generation or self.error is not None or self._exited()
            )
        if self.error is not None:
            raise RuntimeError(f"worker {self.index} refused the configuration: {self.error}")
        if self.generation < generation:
            raise RuntimeError(f"worker {self.index} exited before it was ready")

    def _exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def apply(self, config_message: dict[str, Any]) -> None:
        if self.channel is None:
            return  # a replacement still waiting to start: it starts on the config current then
        self.error = None
        await self.channel.send(self._with_tickets(config_message))
        await asyncio.wait_for(self.wait_ready(int(config_message["generation"])), 15.0)

    def _with_tickets(self, config_message: dict[str, Any]) -> dict[str, Any]:
        """The session-ticket secrets as they are when the message leaves (a rotation may have
        happened since the config message was made, before this worker could be told)."""
        return {**config_message, "tickets": self.master.tickets.message()}

    async def send(self, message: dict[str, Any]) -> None:
        if self.channel is not None and not self._exited():
            # a worker that is gone gets the state again when its replacement starts
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.channel.send(message)

    async def stats(self, timeout: float) -> dict[str, Any]:
        assert self.channel is not None
        request_id = next(_ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stats[request_id] = future
        await self.channel.send({"type": "stats", "id": request_id})
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._stats.pop(request_id, None)

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _worker_environment() -> dict[str, str]:
    """The master's environment, with this package importable even when it runs from a checkout.

    A worker runs in the config file's directory, so an import that only worked through the
    master's working directory would fail there.
    """
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env
