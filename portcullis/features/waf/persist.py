"""Persistent collections: `initcol:ip=%{remote_addr}`, `expirevar`, `deprecatevar`.

`IP`, `GLOBAL`, `SESSION` and `USER` hold variables from one request to the next of the same
key (a client address, `global` ...). `initcol` loads a record into the transaction; what the
rules then write to it is stored back when each phase ends, with the expiry times `expirevar`
set. A record nobody wrote to for `RECORD_TIMEOUT` seconds is forgotten, as ModSecurity's
`SecCollectionTimeout` does, and the store keeps at most `MAX_RECORDS` records (the least
recently written go first), so a flood of new client addresses costs bounded memory.

The store lives in the worker, like ModSecurity 3's in-memory collections: each worker counts
on its own, and a reload that keeps the WAF's config (and the workers) keeps the records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from portcullis.features.waf.actions import PERSISTENT, Template, template, to_int

if TYPE_CHECKING:
    from portcullis.features.waf.transaction import Transaction

RECORD_TIMEOUT = 3600.0  # seconds (ModSecurity's default SecCollectionTimeout)
MAX_RECORDS = 50_000


@dataclass(slots=True)
class Record:
    values: dict[str, str] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)  # variable -> when it goes
    updated: float = 0.0


class CollectionStore:
    """The records of the persistent collections, by (collection, key)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_records: int = MAX_RECORDS) -> None:
        self.clock = clock
        self.max_records = max_records
        self.records: dict[tuple[str, str], Record] = {}  # oldest write first
        self.folded_reads: frozenset[str] | None = None
        """The collections the folded plans read (fold.stored_reads): a transaction that runs
        them loads no other. (The CRS loads IP on every request and reads it only when
        `do_reput_block` is set.)"""

    def load(self, txn: Transaction, collection: str, key: str) -> None:
        """`initcol`: the record's live variables become the transaction's collection."""
        slot = (collection, key)
        record = self.records.get(slot)
        values: dict[str, str] = {}
        if record is not None:
            now = self.clock()
            if now - record.updated > RECORD_TIMEOUT:
                del self.records[slot]
            else:
                expires = record.expires
                values = {n: v for n, v in record.values.items() if n not in expires or expires[n] > now}
        txn.persistent[collection] = values
        txn.loaded[collection] = (key, dict(values))

    def save(self, txn: Transaction) -> None:
        """Store what the transaction's loaded collections hold now, where it changed."""
        expiries = txn.expiries
        now = -1.0
        for collection, (key, before) in txn.loaded.items():
            values = txn.persistent.get(collection, {})
            if values == before and not any(c == collection for c, _ in expiries):
                continue  # as loaded: the record stays as it is (and ages from its last write)
            if now < 0:
                now = self.clock()
            slot = (collection, key)
            record = self.records.pop(slot, None)  # popped: written again, it moves to the end
            if record is None:
                record = Record()
            record.values = dict(values)
            expires = {name: at for name, at in record.expires.items() if name in values}
            for (col, name), seconds in expiries.items():
                if col == collection and name in values:
                    expires[name] = now + seconds
            record.expires = expires
            record.updated = now
            self.records[slot] = record
            txn.loaded[collection] = (key, dict(values))
        expiries.clear()
        while len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]

    def deprecate(self, txn: Transaction, collection: str, name: str, amount: int, period: float) -> None:
        """`deprecatevar:ip.score=60/300`: take `amount` off the variable for every `period`
        seconds since the record was last written."""
        loaded = txn.loaded.get(collection)
        record = self.records.get((collection, loaded[0])) if loaded is not None else None
        values = txn.persistent.get(collection, {})
        if record is None or name not in values or period <= 0:
            return
        steps = int((self.clock() - record.updated) // period)
        if steps > 0:
            values[name] = str(max(0, to_int(values[name]) - steps * amount))


class CollectionAction:
    """`initcol`, `expirevar` or `deprecatevar`, its texts parsed once."""

    __slots__ = ("collection", "kind", "name", "persistent", "value")

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        target, _, value = text.partition("=")
        collection, _, name = target.strip().partition(".")
        self.collection = collection.upper()
        self.name = name.lower()
        self.value: Template = template(value.strip())
        self.persistent = self.collection in PERSISTENT

    def apply(self, txn: Transaction) -> None:
        if not self.persistent:
            return  # (an `expirevar` on TX: the transaction ends sooner anyway)
        store = txn.shared.stored
        if self.kind == "initcol":
            reads = store.folded_reads
            if txn.folded and reads is not None and self.collection not in reads:
                return  # nothing that runs reads it
            store.load(txn, self.collection, self.value.render(txn))
        elif self.kind == "expirevar":
            txn.expiries[(self.collection, self.name)] = float(to_int(self.value.render(txn)))
        else:
            amount, _, period = self.value.render(txn).partition("/")
            store.deprecate(txn, self.collection, self.name, to_int(amount), float(to_int(period)))


COLLECTION_ACTIONS = ("initcol", "expirevar", "deprecatevar")
