"""Target selection (`ARGS|!ARGS:foo|&TX:x|REQUEST_COOKIES:/re/`), compiled once per target.

A `Selector` is one target of a rule with the rule's exclusions for that collection. Selectors
over request data (not TX, MATCHED_VAR ... whose values change while rules run) are numbered,
and what they select is cached per transaction under that number, so the many CRS rules that
read `ARGS|ARGS_NAMES|REQUEST_COOKIES|...` build each list once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, ClassVar

from portcullis.features.waf.request import source
from portcullis.features.waf.seclang import TargetSpec

if TYPE_CHECKING:
    from portcullis.features.waf.transaction import Pairs, Transaction

Selected = Sequence[tuple[str, str]]  # what a selector selected: (full name, value) pairs

# variables whose values change while rules run: never cached per request
DYNAMIC = frozenset(
    {"TX", "MATCHED_VAR", "MATCHED_VARS", "MATCHED_VAR_NAME", "MATCHED_VARS_NAMES", "IP", "GLOBAL", "SESSION",
     "USER", "DURATION", "RULE"}
)

_KEY_REGEXES: dict[str, re.Pattern[str]] = {}
_MAX_KEYS = 4096
_MAX_ADDED = 1024  # runs of added TX keys kept per selector


def key_regex(pattern: str) -> re.Pattern[str]:
    compiled = _KEY_REGEXES.get(pattern)
    if compiled is None:
        compiled = _KEY_REGEXES[pattern] = re.compile(pattern, re.I)
    return compiled


def is_static(collection: str) -> bool:
    """Request data that only changes when new data (the body, the response) arrives."""
    return collection not in DYNAMIC and not collection.startswith("TIME")


class Selector:
    """One target and the exclusions that apply to its collection."""

    __slots__ = (
        "added_seen", "collection", "count", "exclusions", "key", "key_re", "key_seen", "seeded", "shared", "slot",
        "source", "spec", "tx_name", "uid",
    )  # fmt: skip
    made: ClassVar[int] = 0

    def __init__(self, spec: TargetSpec, exclusions: list[TargetSpec], slot: int) -> None:
        self.spec = spec
        self.collection = spec.collection
        self.key = spec.key
        self.key_re = key_regex(spec.key_regex) if spec.key_regex is not None else None
        self.count = spec.count
        self.exclusions = tuple(ex for ex in exclusions if ex.collection == spec.collection)
        self.slot = slot  # cache slot for static selections, -1: not cached
        self.tx_name = f"TX:{spec.key}" if spec.collection == "TX" and spec.key is not None else ""
        self.key_seen: dict[str, bool] = {}  # key -> whether `key_re` finds it (keys repeat a lot)
        self.added_seen: dict[tuple[str, ...], list[str]] = {}  # TX keys added -> those it selects
        Selector.made += 1
        self.uid = Selector.made
        self.seeded: tuple[object, list[str]] | None = None  # (a TX seed, its keys this selects)
        self.source = source(spec.collection)
        # what it selected, by the number of the head (or head and body) it came from, across
        # transactions (attached by the rule set, under its budget)
        self.shared: dict[int, Selected] | None = None

    def values(self, txn: Transaction) -> Selected:
        """The (full name, value) pairs; a count target gives one pair, the count."""
        slot = self.slot
        if slot >= 0:
            cache = txn.selected
            found = cache.get(slot)
            if found is None:
                shared = self.shared
                if shared is None:
                    found = self._values(txn, self.exclusions)
                else:
                    number = txn.numbers.get(self.source) or txn.number(self.source)
                    found = shared.get(number)
                    if found is None:
                        # a tuple: the collector stops walking it (a list it walks as long as it is kept)
                        found = shared[number] = tuple(self._values(txn, self.exclusions))
                        budget = txn.shared.budget
                        budget.chars += len(found) + 1
                        budget.entries += 1
                cache[slot] = found
            return found
        return self._values(txn, self.exclusions)

    def values_without(self, txn: Transaction, extra: list[TargetSpec]) -> Selected:
        """As `values`, less targets a `ctl:ruleRemoveTarget...` took away at run time."""
        more = [ex for ex in extra if ex.collection == self.collection]
        return self._values(txn, (*self.exclusions, *more)) if more else self.values(txn)

    def _values(self, txn: Transaction, exclusions: tuple[TargetSpec, ...]) -> Pairs:
        pairs = self._select(txn, exclusions)
        if self.count:
            return [(self.collection, str(len(pairs)))]
        return pairs

    def _select(self, txn: Transaction, exclusions: tuple[TargetSpec, ...]) -> Pairs:
        collection = self.collection
        if self.tx_name and not exclusions:
            value = txn.tx.get(self.key or "")  # TX keys are stored lower-cased
            return [] if value is None else [(self.tx_name, value)]
        if self.key_re is not None and collection == "TX" and not exclusions:
            return self._tx_by_regex(txn)
        items = txn.items(collection)
        if not items:
            return []
        key, key_re = self.key, self.key_re
        if key is None and key_re is None and not exclusions:
            return [(f"{collection}:{k}" if k else collection, v) for k, v in items]
        out: Pairs = []
        seen = self.key_seen
        for k, v in items:
            if key is not None and k != key and k.lower() != key:
                continue
            if key_re is not None:
                found = seen.get(k)
                if found is None:
                    found = key_re.search(k) is not None
                    if len(seen) < _MAX_KEYS:
                        seen[k] = found
                if not found:
                    continue
            if exclusions and excluded(k, exclusions):
                continue
            out.append((f"{collection}:{k}" if k else collection, v))
        return out


    def _tx_by_regex(self, txn: Transaction) -> Pairs:
        """`TX:/regex/`: TX only grows while rules run (keys are added at the end, a removal is
        counted), so the keys already looked at are remembered per transaction."""
        tx = txn.tx
        state = txn.tx_keys.get(self.uid)
        names: list[str]
        if state is not None and state[0] == txn.tx_dropped and state[1] <= len(tx):
            _, start, names = state
        elif txn.tx_seed is not None and txn.tx_seed_dropped == txn.tx_dropped:
            # TX started as a copy of the seed (fold.Snapshot): its keys come first, in order
            seed_keys = txn.tx_seed_keys
            if self.seeded is None or self.seeded[0] is not txn.tx_seed:
                self.seeded = (txn.tx_seed, [k for k in seed_keys if self._key_matches(k)])
            names, start = self.seeded[1], len(seed_keys)
        else:
            names, start = [], 0
        if start < len(tx):
            added = tuple(islice(tx, start, None))
            # the keys rules add repeat from request to request: their selection is kept whole
            found = self.added_seen.get(added)
            if found is None:
                found = [k for k in added if self._key_matches(k)]
                if len(self.added_seen) < _MAX_ADDED:
                    self.added_seen[added] = found
            names = names + found if names else found
            txn.tx_keys[self.uid] = (txn.tx_dropped, len(tx), names)
        return [("TX:" + k, tx[k]) for k in names]

    def _key_matches(self, key: str) -> bool:
        seen = self.key_seen
        found = seen.get(key)
        if found is None:
            assert self.key_re is not None
            found = self.key_re.search(key) is not None
            if len(seen) < _MAX_KEYS:
                seen[key] = found
        return found


def excluded(key: str, exclusions: tuple[TargetSpec, ...] | list[TargetSpec]) -> bool:
    low = key.lower()
    for ex in exclusions:
        if ex.key is None and ex.key_regex is None:
            return True
        if ex.key is not None and ex.key == low:
            return True
        if ex.key_regex is not None and key_regex(ex.key_regex).search(key):
            return True
    return False
