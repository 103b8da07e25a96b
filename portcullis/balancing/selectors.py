"""Peer selection rules: pure objects, no I/O, a random source that tests can seed.

Every selector is built once per upstream with the full peer list and asked to `pick` one
of the peers that `eligible` accepts (healthy, not ejected, not already tried ...).
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Protocol


class Candidate(Protocol):
    """What a selector may read of a peer."""

    @property
    def key(self) -> str: ...  # stable identity, e.g. the peer URL

    @property
    def weight(self) -> float: ...

    @property
    def active(self) -> int: ...  # requests in flight

    @property
    def ewma(self) -> float: ...  # smoothed response time in seconds


Eligible = Callable[[Candidate], bool]


def _everyone(_: Candidate) -> bool:
    return True


class Selector:
    def __init__(self, peers: Sequence[Candidate], rng: random.Random | None = None) -> None:
        self.peers = tuple(peers)
        self.rng = rng or random.Random()
        self.fixed_weights: list[float] | None = None
        """Set (`fix_weights`) when weights never change (no slow start): read once, not per pick."""
        self.equal_weights = False
        """Fixed weights that are all the same."""

    def fix_weights(self, weights: list[float]) -> None:
        self.fixed_weights = weights
        self.equal_weights = len(set(weights)) == 1

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        raise NotImplementedError

    def quick(self) -> Callable[[], Candidate | None]:
        """`pick()` among every peer, as the cheapest callable this selector can make of it
        (for a request's first try, when every peer is in service and no key is needed)."""
        return self.pick


class RoundRobin(Selector):
    """Smooth weighted round robin (nginx): over a cycle of total weight, each peer is picked
    exactly `weight` times, interleaved rather than in bursts."""

    def __init__(self, peers: Sequence[Candidate], rng: random.Random | None = None) -> None:
        super().__init__(peers, rng)
        self.current = [0.0] * len(self.peers)
        self._turn = 0

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        best = -1
        total = 0.0
        current = self.current
        fixed = self.fixed_weights if eligible is _everyone else None
        if fixed is not None:
            if self.equal_weights:
                # equal weights: the smooth weighted order is the peers in turn
                turn = self._turn
                self._turn = turn + 1 if turn + 1 < len(fixed) else 0
                return self.peers[turn]
            for index, weight in enumerate(fixed):
                current[index] += weight
                total += weight
                if best < 0 or current[index] > current[best]:
                    best = index
        else:
            for index, peer in enumerate(self.peers):
                if not eligible(peer):
                    continue
                weight = peer.weight
                current[index] += weight
                total += weight
                if best < 0 or current[index] > current[best]:
                    best = index
        if best < 0:
            return None
        current[best] -= total
        return self.peers[best]


class LeastConn(Selector):
    """Fewest requests in flight relative to weight; ties broken at random."""

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        # one pass; among equal loads, the k-th tie replaces the choice with probability 1/k
        # (reservoir sampling), which leaves each tied peer equally likely
        best: Candidate | None = None
        least = math.inf
        ties = 0
        everyone = eligible is _everyone
        if everyone and self.equal_weights:
            for peer in self.peers:
                active = peer.active
                if active < least:
                    best, least, ties = peer, active, 1
                elif active == least:
                    ties += 1
                    if self.rng.random() * ties < 1.0:
                        best = peer
            return best
        fixed = self.fixed_weights
        for index, peer in enumerate(self.peers):
            if not everyone and not eligible(peer):
                continue
            load = peer.active / (fixed[index] if fixed is not None else peer.weight)
            if load < least:
                best, least, ties = peer, load, 1
            elif load == least:
                ties += 1
                if self.rng.random() * ties < 1.0:
                    best = peer
        return best


class RandomChoice(Selector):
    """Weighted random."""

    _cumulative: list[float] | None = None

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        fixed = self.fixed_weights
        if fixed is not None and eligible is _everyone and self.peers:
            # every peer, weights that never change: one draw on the cumulative weights
            cumulative = self._cumulative
            if cumulative is None:
                cumulative = self._cumulative = list(accumulate(fixed))
            return self.peers[bisect_right(cumulative, self.rng.random() * cumulative[-1])]
        pool = [p for p in self.peers if eligible(p)]
        if not pool:
            return None
        return self.rng.choices(pool, weights=[p.weight for p in pool])[0]


_PAIRS_UP_TO = 64  # peers; 4,032 ordered pairs at most


class P2CEwma(Selector):
    """Power of two choices on a moving average of latency times outstanding requests
    (as Linkerd and Envoy do): two random peers, the one with the lower cost wins."""

    _pairs: list[tuple[Candidate, Candidate]] | None = None

    def _pair_list(self) -> list[tuple[Candidate, Candidate]]:
        """Every ordered pair of two distinct peers, listed once: one draw picks two peers."""
        if self._pairs is None:
            self._pairs = [(x, y) for x in self.peers for y in self.peers if x is not y]
        return self._pairs

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        if eligible is _everyone:
            pool: Sequence[Candidate] = self.peers
        else:
            pool = [p for p in self.peers if eligible(p)]
        n = len(pool)
        if n <= 1:
            return pool[0] if pool else None
        if pool is self.peers and n <= _PAIRS_UP_TO:
            pairs = self._pair_list()
            a, b = pairs[int(self.rng.random() * len(pairs))]
            if self.equal_weights:
                return a if (a.ewma + 1e-4) * (a.active + 1) <= (b.ewma + 1e-4) * (b.active + 1) else b
            return a if _cost(a) <= _cost(b) else b
        # two distinct peers at random, from one draw: an ordered pair of the n * (n - 1)
        i, j = divmod(int(self.rng.random() * n * (n - 1)), n - 1)
        if j >= i:
            j += 1
        a, b = pool[i], pool[j]
        return a if _cost(a) <= _cost(b) else b

    def quick(self) -> Callable[[], Candidate | None]:
        if not self.equal_weights or not 1 < len(self.peers) <= _PAIRS_UP_TO:
            return self.pick
        # equal weights that never change: `pick` without its checks, its state bound once
        pairs = self._pair_list()
        count = len(pairs)
        draw = self.rng.random

        def pick_of_two() -> Candidate:
            a, b = pairs[int(draw() * count)]
            return a if (a.ewma + 1e-4) * (a.active + 1) <= (b.ewma + 1e-4) * (b.active + 1) else b

        return pick_of_two


def _cost(peer: Candidate) -> float:
    return (peer.ewma + 1e-4) * (peer.active + 1) / peer.weight


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Maglev(Selector):
    """Consistent hashing with a Maglev lookup table: removing one peer of N moves about 1/N of
    the keys, and the spread is even. An ineligible peer's keys go to the next table entries."""

    TABLE_SIZE = 65537  # prime, much larger than any peer count

    _SLOTS_CACHED = 4096

    def __init__(self, peers: Sequence[Candidate], rng: random.Random | None = None) -> None:
        super().__init__(peers, rng)
        # each table slot's peer itself, so that a pick is one dict and one list lookup
        self.table: list[Candidate] = [self.peers[i] for i in self._populate()] if self.peers else []
        # the table slot of each recent key: client addresses and user ids repeat request after request
        self._slots: dict[bytes, int] = {}

    def _populate(self) -> list[int]:
        size = self.TABLE_SIZE
        n = len(self.peers)
        table = [-1] * size
        if n == 0:
            return table
        offsets, skips, nexts = [], [], [0] * n
        for peer in self.peers:
            offsets.append(_hash64(b"offset:" + peer.key.encode()) % size)
            skips.append(_hash64(b"skip:" + peer.key.encode()) % (size - 1) + 1)
        # weights: a peer gets `weight` turns per round
        turns = [max(1, round(p.weight)) for p in self.peers]
        filled = 0
        while True:
            for i in range(n):
                for _ in range(turns[i]):
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                    while table[slot] >= 0:
                        nexts[i] += 1
                        slot = (offsets[i] + nexts[i] * skips[i]) % size
                    table[slot] = i
                    nexts[i] += 1
                    filled += 1
                    if filled == size:
                        return table

    def pick(self, hash_key: bytes | None = None, eligible: Eligible = _everyone) -> Candidate | None:
        table = self.table
        if not table:
            return None
        if hash_key is None:  # no key in this request: any slot
            slot = self.rng.randrange(self.TABLE_SIZE)
        else:
            slot = self._slots.get(hash_key, -1)
            if slot < 0:
                slot = self._slot_of(hash_key)
        if eligible is _everyone:
            return table[slot]
        for step in range(self.TABLE_SIZE):
            peer = table[(slot + step) % self.TABLE_SIZE]
            if eligible(peer):
                return peer
            if step > 4 * len(self.peers) + 64 and not any(eligible(p) for p in self.peers):
                return None
        return None

    def lookup(self) -> tuple[list[Candidate], dict[bytes, int], Callable[[bytes], int]]:
        """The table, the cache of recent keys' slots and the function that fills it: what a
        caller that finds its key itself needs to pick in its own frame (every peer eligible):
        `table[slots.get(key, -1)]` when that is a slot, else `table[slot_of(key)]`."""
        return self.table, self._slots, self._slot_of

    def _slot_of(self, hash_key: bytes) -> int:
        slots = self._slots
        slot = _hash64(hash_key) % self.TABLE_SIZE
        if len(slots) >= self._SLOTS_CACHED:
            slots.clear()
        slots[hash_key] = slot
        return slot


class IpHash(Maglev):
    """Consistent hashing on the client address (the caller passes it as the key)."""


SELECTORS: dict[str, type[Selector]] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "random": RandomChoice,
    "p2c_ewma": P2CEwma,
    "ip_hash": IpHash,
    "consistent_hash": Maglev,
}
