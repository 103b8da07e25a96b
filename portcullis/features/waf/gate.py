"""Per request: transformed values, their scans, and the phase-wide gate.

The gate of a phase scans every item of the collections its gated rules read, through each
pipeline those rules use, once; a gated rule whose pattern no value hit is skipped without
being looked at further. Most pipelines leave a clean value as it is (no `%`, no `&`, no upper
case ...): those are recognised by cheap tests (`transforms.MAY_CHANGE`) and share the scan of
the value itself, so a clean item costs one scan, whatever the number of pipelines.

Sets of pattern ids are ints, one bit per id: kept by the thousand in caches, an int costs the
garbage collector nothing, where a frozenset is one more object for it to walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from portcullis.features.waf.request import source
from portcullis.features.waf.transforms import ALWAYS, change_bits, may_change

if TYPE_CHECKING:
    from portcullis.features.waf.ruleset import RuleSet
    from portcullis.features.waf.transaction import Transaction

EMPTY = 0
_MAX_PLANS = 1024


def _on_match(pattern_id: int, start: int, end: int, flags: int, context: list[int]) -> bool | None:
    context[0] |= 1 << pattern_id
    return None


def scan(db: Any, value: str) -> int:
    """The pattern ids of a database that may match a value (a bit set)."""
    found = [EMPTY]
    # (data, match_event_handler, flags, context) by position: keywords cost a third of a scan
    db.scan(value.encode("latin-1", "replace"), _on_match, 0, found)
    return found[0]


def mask(ids: Iterable[int]) -> int:
    """A bit set of pattern ids."""
    out = 0
    for i in ids:
        out |= 1 << i
    return out


def ids_of(bits: int) -> list[int]:
    """The pattern ids in a bit set."""
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


def hits(ruleset: RuleSet, db: int, value: str) -> int:
    """`scan`, cached (a value is scanned once per database, across requests too)."""
    cache = ruleset.scan_cache[db]
    found = cache.get(value)
    if found is None:
        found = cache[value] = scan(ruleset.prefilters[db], value)
        budget = ruleset.budget
        budget.chars += len(value)
        budget.entries += 1
    return found


def through(ruleset: RuleSet, pipeline: int, value: str) -> str:
    """The value through a pipeline, cached. Only the last step's output is kept: most steps
    leave a value as it is and return at once, which costs less than caching what each made;
    the output of the pipeline less its last step is used when it is at hand. A new value that
    no step can change (one test for the whole pipeline, `RuleSet.changes`) is not run through
    the steps at all: a call per step costs more than the test."""
    funcs = ruleset.pipelines[pipeline]
    if not funcs:
        return value
    cache = ruleset.transform_cache[pipeline]
    out = cache.get(value)
    if out is None:
        out = ruleset.transform_cache[ruleset.parents[pipeline]].get(value)
        if out is not None:
            out = funcs[-1](out)
        elif not ruleset.changes[pipeline](value):
            out = value
        else:
            out = value
            for fn in funcs:
                out = fn(out)
        budget = ruleset.budget
        if out == value:
            out = value  # the same object: nothing more to keep
            budget.chars += len(value)
        else:
            budget.chars += len(value) + len(out)
        budget.entries += 1
        cache[value] = out
    return out


@dataclass(frozen=True, slots=True)
class Reader:
    """Gated rules read a collection through a pipeline, looking for these patterns. A reader
    whose pipeline changes nearly every value (`base64Decode`) has a database of its own
    patterns (`db`, -1: none): its outputs are scanned against that, not against the whole
    collection's: a small database is scanned faster, and finds the same of these patterns."""

    pipeline: int
    patterns: int  # a bit set
    transforms: tuple[Callable[[str], str], ...]
    db: int = -1


class CollectionGate:
    """How the gated rules of a phase read one collection: `every` item, or items by key."""

    def __init__(
        self, collection: str, db: int, every: tuple[Reader, ...], keyed: dict[str, tuple[Reader, ...]]
    ) -> None:
        self.collection = collection
        self.source = source(collection)
        self.db = db
        self.keyed = keyed
        # readers through a transformation that changes every value (base64Decode ...) always
        # transform it; for the others, one quick test first: most values pass through every
        # pipeline unchanged ...
        self.always = tuple(r for r in every if may_change(r.transforms) is ALWAYS)
        self.every = every = tuple(r for r in every if r not in self.always)
        self.funcs = funcs = tuple(dict.fromkeys(fn for r in every for fn in r.transforms))
        self.screen = may_change(funcs)
        # ... and for the others, which transformations may change them (bit i: funcs[i])
        self.changes = change_bits(funcs)
        bits = {fn: 1 << i for i, fn in enumerate(funcs)}
        self.masks = tuple(sum(bits[fn] for fn in set(r.transforms)) for r in every)
        # per set of tests a value fails: the patterns of readers that see the value unchanged,
        # and how the others transform it
        self.plans: dict[int, Walk] = {}
        self.cache: dict[str, int] = {}  # value -> what `every` reader found in it
        self.memo: dict[int, int] = {}  # collection number -> what all readers found

    def plan(self, changed: int, ruleset: RuleSet) -> Walk:
        found = self.plans.get(changed)
        if found is None:
            same = 0
            readers = list(self.always)
            for reader, mask in zip(self.every, self.masks, strict=True):
                if mask & changed:
                    readers.append(reader)
                else:
                    same |= reader.patterns
            found = _walk(same, readers, ruleset)
            if len(self.plans) < _MAX_PLANS:
                self.plans[changed] = found
        return found

    def collect(self, txn: Transaction, ruleset: RuleSet) -> int:
        """The pattern ids the collection's items hit, through the readers' pipelines."""
        number = txn.numbers.get(self.source) or txn.number(self.source)
        got = self.memo.get(number)
        if got is None:
            got = self.memo[number] = self._collect(txn.items(self.collection), ruleset)
            ruleset.budget.entries += 1
        return got

    def _collect(self, items: list[tuple[str, str]], ruleset: RuleSet) -> int:
        cache = self.cache
        keyed = self.keyed
        found = 0
        for key, value in items:
            got = cache.get(value)
            if got is None:
                got = cache[value] = self._item(ruleset, value)
                budget = ruleset.budget
                budget.chars += len(value)
                budget.entries += 1
            if got:
                found |= got
            if keyed:
                for reader in keyed.get(key.lower(), ()):
                    out = through(ruleset, reader.pipeline, value)
                    got = hits(ruleset, self.db, out)
                    if got:
                        found |= got & reader.patterns
        return found

    def _item(self, ruleset: RuleSet, value: str) -> int:
        """What the readers of every item find in one value."""
        db = self.db
        seen = hits(ruleset, db, value)
        changed = self.changes(value) if self.screen(value) else 0
        walk = self.plans.get(changed) or self.plan(changed, ruleset)
        found = seen & walk.same
        outs = [value]
        for parent, fn in walk.steps:
            outs.append(fn(outs[parent]))
        for slot, patterns, own in walk.reads:
            out = outs[slot]
            got = seen if out == value else hits(ruleset, db if own < 0 else own, out)
            if got:
                found |= got & patterns
        return found


@dataclass(frozen=True, slots=True)
class Walk:
    """The transformations a value goes through for the readers that must transform it, each
    prefix their pipelines share done once: step k makes `outs[k + 1]` from `outs[parent]`
    (`outs[0]` is the value); a reader finds its patterns in `outs[slot]`."""

    same: int  # the patterns of readers that see the value unchanged
    steps: tuple[tuple[int, Callable[[str], str]], ...]
    reads: tuple[tuple[int, int, int], ...]  # (slot, patterns, the reader's own database or -1)


def _walk(same: int, readers: list[Reader], ruleset: RuleSet) -> Walk:
    """The walk of these readers' pipelines (a pipeline's parent is its prefix, `ruleset.py`)."""
    slots: dict[int, int] = {}  # pipeline -> its slot in `outs`
    steps: list[tuple[int, Callable[[str], str]]] = []

    def slot(pipeline: int) -> int:
        if pipeline < 0 or not ruleset.pipelines[pipeline]:
            return 0
        found = slots.get(pipeline)
        if found is None:
            parent = slot(ruleset.parents[pipeline])
            steps.append((parent, ruleset.pipelines[pipeline][-1]))
            found = slots[pipeline] = len(steps)
        return found

    reads = tuple((slot(r.pipeline), r.patterns, r.db) for r in readers)
    return Walk(same, tuple(steps), reads)


def phase_hits(txn: Transaction, ruleset: RuleSet, phase: int) -> int:
    """The pattern ids that some value read by a gated rule of the phase hit (per request)."""
    found = txn.gate_hits.get(phase)
    if found is None:
        found = 0
        numbers = txn.numbers
        for gate in ruleset.gates.get(phase, ()):
            # `collect`, its memo looked in here: most gates meet contents they met before
            got = gate.memo.get(numbers.get(gate.source) or txn.number(gate.source))
            found |= gate.collect(txn, ruleset) if got is None else got
        txn.gate_hits[phase] = found
    return found
