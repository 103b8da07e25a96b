"""Peer discovery: host names resolved again on an interval, and a watched peer-list file.

Each worker runs it for the upstreams that ask for it. When the resolved set changes, the
group adopts the new peer list; peers that stay keep their connections, health and load.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import yaml
from pydantic import TypeAdapter, ValidationError

from portcullis.config.schema import Discovery as DiscoveryConfig
from portcullis.config.schema import Peer as PeerSpec
from portcullis.config.units import parse_peer_url
from portcullis.observability.events import event

log = logging.getLogger("portcullis")

_PEER_LIST = TypeAdapter(list[PeerSpec])


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete peer to connect to, and the configured peer it came from."""

    url: str
    origin: str
    weight: int
    backup: bool
    max_conns: int


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def expand(spec: PeerSpec, resolve: bool) -> list[Target]:
    """The concrete peers of one configured peer: itself, or one per address of its host name."""
    scheme, _, host, port = parse_peer_url(spec.url)
    if not resolve or _is_ip(host):
        return [Target(spec.url, spec.url, spec.weight, spec.backup, spec.max_conns)]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({str(info[4][0]) for info in infos})
    return [
        Target(
            f"{scheme}://{f'[{ip}]' if ':' in ip else ip}:{port}", spec.url, spec.weight, spec.backup, spec.max_conns
        )
        for ip in addresses
    ]


def read_peer_file(path: str) -> list[PeerSpec]:
    """The peers listed in a YAML file (a list shaped like `peers`); ValueError when it is wrong."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if isinstance(data, dict) and "peers" in data:
        data = data["peers"]
    try:
        return _PEER_LIST.validate_python(data or [])
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from exc


Apply = Callable[[Sequence[Target]], None]


class PeerDiscovery:
    def __init__(self, upstream: str, configured: Sequence[PeerSpec], config: DiscoveryConfig, apply: Apply) -> None:
        self.upstream = upstream
        self.configured = list(configured)
        self.config = config
        self.apply = apply
        self._mtime: float | None = None
        self._current: tuple[Target, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> bool:
        """Look again; True when the set of peers changed (and was applied)."""
        specs = self.configured
        if self.config.file is not None:
            try:
                mtime = os.stat(self.config.file).st_mtime
                if mtime != self._mtime:
                    specs = read_peer_file(self.config.file)
                    self.configured = specs
                    self._mtime = mtime
            except (OSError, ValueError, yaml.YAMLError) as exc:
                message = f"upstream {self.upstream}: peer file unusable, keeping the peers: {exc}"
                event(log, "discovery_failed", message, level=logging.WARNING, upstream=self.upstream)
        targets: list[Target] = []
        resolve = self.config.resolve_interval is not None
        for spec in specs:
            try:
                targets += await expand(spec, resolve)
            except OSError as exc:
                # a name that does not resolve now keeps the addresses it had
                kept = [t for t in self._current if t.origin == spec.url]
                targets += kept
                event(log, "discovery_failed", f"upstream {self.upstream}: cannot resolve {spec.url}: {exc}",
                      level=logging.WARNING, upstream=self.upstream)  # fmt: skip
        fresh = tuple(targets)
        if fresh == self._current or not fresh:
            return False
        self._current = fresh
        self.apply(fresh)
        event(log, "peers_changed", f"upstream {self.upstream} now has {len(fresh)} peers",
              upstream=self.upstream, peers=[t.url for t in fresh])  # fmt: skip
        return True

    async def _run(self) -> None:
        intervals = [
            i for i in (self.config.resolve_interval, self.config.watch_interval if self.config.file else None) if i
        ]
        interval = min(intervals) if intervals else 30.0
        while True:
            await self.refresh()
            await asyncio.sleep(interval)
