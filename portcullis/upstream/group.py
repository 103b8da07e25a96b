"""Upstream groups and their peers; selection here is smooth weighted round robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from portcullis.config.schema import Upstream as UpstreamConfig
from portcullis.config.units import parse_address
from portcullis.upstream.pool import Pool

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext


class Peer:
    __slots__ = ("current", "host", "label", "pool", "port", "url", "weight")

    def __init__(self, url: str, weight: int, pool: Pool) -> None:
        self.url = url
        hostport = url.partition("://")[2].rstrip("/")
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport += ":80"
        self.host, self.port = parse_address(hostport)
        self.label = hostport
        self.weight = weight
        self.current = 0
        self.pool = pool


class UpstreamGroup:
    __slots__ = (
        "_next",
        "_total_weight",
        "_uniform",
        "connect_timeout",
        "idle_timeout",
        "name",
        "peers",
        "response_timeout",
    )

    def __init__(self, name: str, config: UpstreamConfig, peers: Sequence[Peer]) -> None:
        self.name = name
        self.peers = tuple(peers)
        self.connect_timeout = config.timeouts.connect
        self.response_timeout = config.timeouts.response
        self.idle_timeout = config.timeouts.idle
        self._total_weight = sum(p.weight for p in self.peers)
        self._uniform = all(p.weight == self.peers[0].weight for p in self.peers)
        self._next = 0

    def select(self, ctx: RequestContext) -> Peer:
        peers = self.peers
        if len(peers) == 1:
            return peers[0]
        if self._uniform:
            self._next = (self._next + 1) % len(peers)
            return peers[self._next]
        # smooth weighted round robin: every peer gains its weight, the richest is picked and pays the total
        best = peers[0]
        for peer in peers:
            peer.current += peer.weight
            if peer.current > best.current:
                best = peer
        best.current -= self._total_weight
        return best
