"""A worker process: started by the master with its listening sockets and a control channel."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvloop

from portcullis.config import ConfigError, load_config_text
from portcullis.observability.events import event, setup_logging
from portcullis.supervisor.control import Channel
from portcullis.tls.tickets import decode_secrets
from portcullis.worker.serve import Worker

log = logging.getLogger("portcullis")

INTERRUPT_DRAIN = 2.0


def _reason(exc: Exception) -> str:
    """One line for the master: an SSLError made of one message reads as a tuple otherwise."""
    if isinstance(exc, OSError) and exc.strerror is None and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc)


def _load(message: dict[str, Any]) -> Any:
    return load_config_text(message["text"], message["filename"], message["base_dir"])


async def _serve(control_fd: int, listeners: dict[str, list[int]]) -> int:
    control = socket.socket(fileno=control_fd)
    channel = await Channel.open(control)
    first = await channel.receive()
    if first is None or first.get("type") != "config":
        return 1
    # relative paths in the config (certificates, peer files ...) are relative to the config file
    os.chdir(first["base_dir"])
    sockets = {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in listeners.items()}
    try:
        config = _load(first)
        worker = Worker(config, sockets, decode_secrets(first.get("tickets")))
        await worker.start(first["generation"])
    except (ConfigError, OSError, ValueError) as exc:
        # what the master's own check could not see (a file changed since, a resource): it says why
        await channel.send({"type": "error", "generation": first["generation"], "error": _reason(exc)})
        return 1
    # the config's objects live as long as the worker: keep them out of the collector's scans
    gc.freeze()
    await channel.send({"type": "ready", "generation": first["generation"], "pid": os.getpid()})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain_timeout = [config.server.timeouts.shutdown]

    def on_signal(interrupt: bool) -> None:
        if interrupt:
            drain_timeout[0] = min(drain_timeout[0], INTERRUPT_DRAIN)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, False)
    loop.add_signal_handler(signal.SIGINT, on_signal, True)
    loop.add_signal_handler(signal.SIGUSR1, worker.reopen_logs)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads; workers are told

    async def control_loop() -> None:
        while True:
            message = await channel.receive()
            if message is None:  # the master is gone: do not outlive it
                stop.set()
                return
            kind = message.get("type")
            if kind == "config":
                try:
                    fresh = _load(message)
                    await worker.swap(fresh, message["generation"])
                    worker.set_ticket_secrets(decode_secrets(message.get("tickets")))
                    drain_timeout[0] = fresh.server.timeouts.shutdown
                except (ConfigError, OSError, ValueError) as exc:
                    await channel.send(
                        {"type": "error", "generation": message["generation"], "error": str(exc)}
                    )
                    continue
                await channel.send({"type": "ready", "generation": message["generation"], "pid": os.getpid()})
            elif kind == "health":
                worker.set_health(message["upstream"], message["peer"], bool(message["ok"]), str(message["reason"]))
            elif kind == "tickets":
                worker.set_ticket_secrets(decode_secrets(message.get("tickets")))
            elif kind == "stats":
                await channel.send({"type": "stats", "id": message["id"], "data": worker.snapshot()})

    control_task = loop.create_task(control_loop())
    await stop.wait()
    control_task.cancel()
    await worker.drain(drain_timeout[0])
    event(log, "worker_stopped", "worker drained and stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portcullis-worker")
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--listener", action="append", default=[], help="NAME=FD[,FD...]")
    args = parser.parse_args(argv)
    setup_logging(f"worker-{args.index}")
    listeners = {}
    for item in args.listener:
        name, _, fds = item.rpartition("=")
        listeners[name] = [int(fd) for fd in fds.split(",")]
    return uvloop.run(_serve(args.control, listeners))


if __name__ == "__main__":
    sys.exit(main())
