"""The master process: binds the listeners, runs and replaces the workers, reloads, serves admin.

Workers are separate Python processes (`portcullis.worker.process`) that inherit the listening
sockets (each listener's group of shards, `portcullis.supervisor.sockets`), so the kernel
spreads connections over them. A reload is checked here first; a good
config is sent to every worker, which provisions it completely before swapping it in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from portcullis.balancing.active import HealthChecker, PeerCheck
from portcullis.config import Config, ConfigError, load_config_text
from portcullis.observability.events import event, setup_logging
from portcullis.supervisor.sockets import BindError, bind_listener, resize_listener
from portcullis.supervisor.tickets import TicketRotation
from portcullis.supervisor.workers import WorkerHandle
from portcullis.tls.acme import AcmeManager

log = logging.getLogger("portcullis")

READY_TIMEOUT = 15.0
RESPAWN_FIRST = 0.5
"""Seconds before replacing a worker that exited before it was ready; doubled each time in a row."""
RESPAWN_MAX = 30.0


def _health_message(check: PeerCheck) -> dict[str, Any]:
    return {
        "type": "health", "upstream": check.upstream, "peer": check.url, "ok": check.healthy, "reason": check.reason,
    }  # fmt: skip


def _listener_keys(config: Config) -> dict[str, str]:
    """What identifies a listener's socket and server: a change to any of it needs new workers."""
    return {
        # the whole listener (tls, redirect_https, h2c ...): the workers build its connection edge at start
        lst.name: f"{lst.listen}|{lst.model_dump_json()}" for lst in config.listeners
    }


def _close_unused(sockets: dict[str, list[socket.socket]], kept: dict[str, list[socket.socket]]) -> None:
    """Close the sockets of `sockets` that `kept` does not hold too."""
    still = {id(sock) for group in kept.values() for sock in group}
    for group in sockets.values():
        for sock in group:
            if id(sock) not in still:
                sock.close()


def _worker_count(config: Config) -> int:
    return (os.cpu_count() or 1) if config.workers == "auto" else int(config.workers)


class Master:
    def __init__(self, config: Config, text: str, path: str | None, base_dir: str) -> None:
        self.config = config
        self.text = text
        self.path = path
        self.filename = path or "<embedded default config>"
        self.base_dir = base_dir
        self.generation = 1
        self.loaded_at = time.time()
        self.last_reload_error: str | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.sockets: dict[str, list[socket.socket]] = {}
        self.workers: list[WorkerHandle] = []
        self.stopping = False
        self.ready = False
        self._reload_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self.started_at = time.time()
        self.health = HealthChecker(config, self._health_changed)
        self.acme = AcmeManager(config)  # ACME issuance and renewal happen once, here
        self._pending: set[asyncio.Task[None]] = set()
        self._start_failures: dict[int, int] = {}  # worker index -> replacements in a row that never got ready
        self.tickets = TicketRotation()  # session-ticket secrets for all workers (portcullis.tls.tickets)
        self.tickets.ensure(config)
        self._ticket_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ start and stop
    async def start(self) -> None:
        self.sockets = {lst.name: bind_listener(lst.listen, lst.shards) for lst in self.config.listeners}
        if self.config.demo:
            from portcullis.demo.upstream import start_demo_upstream

            self._servers.append(await start_demo_upstream())
        if self.config.admin is not None:
            from portcullis.admin.api import start_admin

            self._servers.append(await start_admin(self, self.config.admin))
        self.acme.prepare()  # placeholder certificates, so TLS listeners can start
        await self._start_generation(_worker_count(self.config))
        self.health.start()
        self.acme.start()
        self._restart_ticket_rotation()
        self.ready = True
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(self.stop(signal.SIGTERM)))
        loop.add_signal_handler(signal.SIGINT, lambda: loop.create_task(self.stop(signal.SIGINT)))
        loop.add_signal_handler(signal.SIGUSR1, lambda: self._signal_workers(signal.SIGUSR1))
        event(
            log, "started", "portcullis is serving", generation=self.generation, workers=len(self.workers),
            listeners={lst.name: lst.listen for lst in self.config.listeners},
        )  # fmt: skip

    def health_messages(self) -> list[dict[str, Any]]:
        """What the active checks know, for a worker that has just been given a config."""
        return [_health_message(check) for check in self.health.checks.values()]

    def _health_changed(self, check: PeerCheck) -> None:
        message = _health_message(check)
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            task = loop.create_task(worker.send(message))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def config_message(self) -> dict[str, Any]:
        return {
            "type": "config", "generation": self.generation, "text": self.text, "filename": self.filename,
            "base_dir": self.base_dir,
        }  # fmt: skip

    async def _start_generation(self, count: int) -> list[WorkerHandle]:
        fresh = [WorkerHandle(self, index) for index in range(count)]
        await asyncio.gather(*(w.spawn(self.sockets, self.config_message()) for w in fresh))
        await asyncio.wait_for(asyncio.gather(*(w.wait_ready(self.generation) for w in fresh)), READY_TIMEOUT)
        self.workers = fresh
        return fresh

    def _restart_ticket_rotation(self) -> None:
        if self._ticket_task is not None:
            self._ticket_task.cancel()
        self._ticket_task = asyncio.get_running_loop().create_task(self._rotate_tickets())

    async def _rotate_tickets(self) -> None:
        """Rotate each listener's ticket secret when due and send the new set to every worker."""
        while (due := self.tickets.next_due(self.config)) is not None:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            async with self._reload_lock:  # a generation being started gets the secrets as they are after it
                if not self.tickets.rotate_due(self.config):
                    continue
                message = {"type": "tickets", "tickets": self.tickets.message()}
                await asyncio.gather(*(w.send(message) for w in self.workers))

    def worker_died(self, handle: WorkerHandle, returncode: int) -> None:
        """Called when a worker process exits; a current worker that dies is replaced. One that
        exits before it was ever ready (it refused the configuration: a file changed since the
        master read it) is replaced after a pause that doubles each time, up to RESPAWN_MAX."""
        if self.stopping or handle not in self.workers:
            return
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
        if handle.error is not None:
            how += f" refusing the configuration: {handle.error}"
        failures = 0 if handle.generation > 0 else self._start_failures.get(handle.index, 0) + 1
        self._start_failures[handle.index] = failures
        delay = min(RESPAWN_MAX, RESPAWN_FIRST * 2 ** (failures - 1)) if failures else 0.0
        when = f" in {delay:g} s" if delay else ""
        event(log, "worker_exit", f"worker {handle.index} (pid {handle.pid}) {how}; replacing it{when}",
              level=logging.WARNING, index=handle.index, worker_pid=handle.pid, returncode=returncode,
              error=handle.error, retry_in=delay)  # fmt: skip
        replacement = WorkerHandle(self, handle.index)
        self.workers[self.workers.index(handle)] = replacement
        task = asyncio.get_running_loop().create_task(self._respawn(replacement, delay))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _respawn(self, replacement: WorkerHandle, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping or replacement not in self.workers:
            return
        await replacement.spawn(self.sockets, self.config_message())  # the config current now

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            worker.send_signal(sig)

    async def stop(self, sig: signal.Signals) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self._ticket_task is not None:
            self._ticket_task.cancel()
        await self.acme.stop()
        event(log, "stopping", f"stopping on {sig.name}: draining requests in flight")
        for server in self._servers:
            server.close()
        for worker in self.workers:
            worker.send_signal(sig)
        # stop accepting now: while the master holds the sockets open the kernel still queues new
        # connections that no worker will serve (they would hang, then be reset)
        for group in self.sockets.values():
            for sock in group:
                sock.close()
        limit = self.config.server.timeouts.shutdown + 5.0
        await asyncio.gather(*(w.wait_exit(limit) for w in self.workers))
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------------ reload
    async def reload(self) -> tuple[bool, str | None]:
        """Check the file again and apply it; a bad file leaves the running config in place."""
        async with self._reload_lock:
            if self.path is None:
                return False, "running the embedded default config: nothing to reload"
            try:
                text = Path(self.path).read_text(encoding="utf-8")
                config = load_config_text(text, self.path, self.base_dir)
            except (OSError, UnicodeDecodeError) as exc:
                return self._reload_failed(f"{self.path}: cannot read: {exc}")
            except ConfigError as exc:
                return self._reload_failed(str(exc))
            try:
                fresh_acme = AcmeManager(config)
                fresh_acme.prepare()
                self.tickets.ensure(config)  # new listeners' workers need theirs from the start
                await self._apply(config, text)
            except (BindError, RuntimeError, TimeoutError, OSError) as exc:
                return self._reload_failed(str(exc) or type(exc).__name__)
            await self.acme.stop()
            self.acme = fresh_acme
            self.acme.start()
            self.tickets.prune(config)
            self._restart_ticket_rotation()
            previous = self.health
            await previous.stop()
            self.health = HealthChecker(config, self._health_changed, previous.checks)
            self.health.start()
            for message in self.health_messages():
                for worker in self.workers:
                    await worker.send(message)
            self.reloads += 1
            self.last_reload_error = None
            self.loaded_at = time.time()
            event(log, "reloaded", "configuration reloaded", generation=self.generation)
            return True, None

    def _reload_failed(self, error: str) -> tuple[bool, str]:
        self.reload_failures += 1
        self.last_reload_error = error
        event(log, "reload_failed", "reload refused; the running configuration stays",
              level=logging.ERROR, error=error)  # fmt: skip
        return False, error

    async def _apply(self, config: Config, text: str) -> None:
        old_keys, new_keys = _listener_keys(self.config), _listener_keys(config)
        same_shape = old_keys == new_keys and _worker_count(config) == len(self.workers)
        previous = (self.config, self.text, self.generation)
        self.config, self.text, self.generation = config, text, self.generation + 1
        sockets: dict[str, list[socket.socket]] = {}
        try:
            if same_shape:
                message = self.config_message()
                await asyncio.gather(*(w.apply(message) for w in self.workers))
                return
            # listeners changed: bind what is new, start a new generation of workers, drain the old one
            # a socket is kept by its address, whatever its listener is called now
            bound = {lst.listen: self.sockets[lst.name] for lst in previous[0].listeners}
            for lst in config.listeners:
                keep = bound.get(lst.listen)
                if keep is None:
                    sockets[lst.name] = bind_listener(lst.listen, lst.shards)
                else:
                    sockets[lst.name] = resize_listener(keep, lst.listen, lst.shards)
        except BaseException:
            self.config, self.text, self.generation = previous
            _close_unused(sockets, self.sockets)  # what this reload bound before it failed
            raise
        old_workers, old_sockets = self.workers, self.sockets
        self.sockets = sockets
        try:
            await self._start_generation(_worker_count(config))
        except BaseException:
            self.config, self.text, self.generation = previous
            self.sockets = old_sockets
            _close_unused(sockets, old_sockets)
            raise
        for worker in old_workers:
            worker.send_signal(signal.SIGTERM)
        _close_unused(old_sockets, sockets)

    # ------------------------------------------------------------------ for the admin API
    async def collect_stats(self) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(w.stats(timeout=2.0) for w in self.workers), return_exceptions=True)
        return [r for r in results if isinstance(r, dict)]


async def _main(config: Config, text: str, path: str | None, base_dir: str) -> int:
    master = Master(config, text, path, base_dir)
    try:
        await master.start()
    except BindError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("portcullis: workers did not become ready in time", file=sys.stderr)
        await master.stop(signal.SIGTERM)
        return 1
    except RuntimeError as exc:  # a worker refused the configuration, or died starting
        print(f"portcullis: {exc}", file=sys.stderr)
        await master.stop(signal.SIGTERM)
        return 1
    await master.wait_stopped()
    event(log, "stopped", "portcullis stopped")
    return 0


def run(config: Config, text: str, path: str | None, base_dir: str) -> int:
    import uvloop

    setup_logging("master")
    base_dir = os.path.abspath(base_dir)
    os.chdir(base_dir)  # relative paths in the config are relative to the config file
    return uvloop.run(_main(config, text, path, base_dir))
