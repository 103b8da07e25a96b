"""Bounded caches of pure functions of a value, shared by the transactions of a rule set.

Transformations, prefilter scans and most operators depend on nothing but the value (and the
rule), and real traffic repeats values a lot (headers, argument names, common arguments): their
results are kept across requests. A budget bounds what all the caches of a rule set hold
together, in characters and entries; past it they are all emptied and start over, so a flood of
distinct values costs what it would without caching, and memory stays bounded.
"""

from __future__ import annotations

from typing import Any, TypeVar

from portcullis.features.waf.persist import CollectionStore
from portcullis.features.waf.request import Head, HeaderPart, HttpRequest, head_key, parse_head, parse_headers

D = TypeVar("D", bound=dict[Any, Any])


class Budget:
    def __init__(self, chars: int = 8 << 20, entries: int = 250_000) -> None:
        self.max_chars = chars
        self.max_entries = entries
        self.chars = 0
        self.entries = 0
        self.tables: list[dict[Any, Any]] = []
        self.resets = 0

    def table(self, table: D) -> D:
        """Put a cache under this budget."""
        self.tables.append(table)
        return table

    def charge(self, chars: int) -> None:
        """One more entry, keyed by a value of `chars` characters. The hot paths add to `chars`
        and `entries` themselves (a call per entry costs more than the entry), and `check` runs
        when a transaction starts: the caches may pass their bounds by what one request adds."""
        self.chars += chars
        self.entries += 1
        self.check()

    def check(self) -> None:
        """Past the bounds: every cache starts over."""
        if self.chars > self.max_chars or self.entries > self.max_entries:
            for table in self.tables:
                table.clear()
            self.chars = self.entries = 0
            self.resets += 1


class Numbers:
    """A number for each distinct list of (key, value) pairs, a collection's items: a rule that
    found nothing in the same collections before finds nothing again (`Rule.memo`). Numbers are
    never reused, so a number a memo remembers from before a reset cannot stand for new data."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.numbers: dict[tuple[tuple[str, str], ...], int] = budget.table({})
        self.scalars: dict[str, int] = budget.table({})  # a scalar variable's value -> number
        self.bodies: dict[tuple[int, str, str], int] = budget.table({})  # (head, processor, body) -> number
        self.empty = self.last = 1  # no pairs: the most common content, kept across resets

    def number(self, pairs: list[tuple[str, str]]) -> int:
        if not pairs:
            return self.empty
        key = tuple(pairs)
        found = self.numbers.get(key)
        if found is None:
            found = self._issue(self.numbers, key, sum([len(n) + len(v) for n, v in pairs]) + 1)
        return found

    def scalar(self, value: str) -> int:
        """The number of a scalar variable's one item, by its value alone: no tuples to build
        and hash. A source is numbered either way, always the same, so the two never meet."""
        found = self.scalars.get(value)
        if found is None:
            found = self._issue(self.scalars, value, len(value) + 1)
        return found

    def body(self, head: int, processor: str, text: str) -> int:
        """The number of a head's number with a body processor and a body, keyed by them as they
        are: no pairs to build, no head number to make a string of. Only "body" is numbered so."""
        key = (head, processor, text)
        found = self.bodies.get(key)
        if found is None:
            found = self._issue(self.bodies, key, len(processor) + len(text) + 1)
        return found

    def _issue(self, table: dict[Any, int], key: Any, chars: int) -> int:
        """A new number for `key` in one of the tables, charged to the budget (a key of `chars`
        characters). The hit path of the callers stays a dict lookup."""
        self.last += 1
        table[key] = self.last
        budget = self.budget
        budget.chars += chars
        budget.entries += 1
        return self.last


class Shared:
    """What the transactions of a rule set share: the budget, the numbers, the parsed heads."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget or Budget()
        self.numbers = Numbers(self.budget)
        self.heads: dict[tuple[tuple[str, str], ...], tuple[int, int, Head]] = self.budget.table({})
        self.seen: dict[int, bool] = self.budget.table({})  # hashes of heads met once
        self.parts: dict[int, HeaderPart] = self.budget.table({})  # headers' number -> what they make
        # state, not a cache: the persistent collections are not emptied with the caches
        self.stored = CollectionStore()

    def head(self, request: HttpRequest) -> tuple[int, int, Head]:
        """A request head's number, its headers' number and what it makes (parsed once per
        distinct head). A head is kept from its second time on: most request lines that carry
        argument values come once, and keeping what they make would only feed the collector.
        What the headers make is kept from the first time: they come again with the next line."""
        self.budget.check()
        key = head_key(request)
        found = self.heads.get(key)
        if found is None:
            numbers = self.numbers
            headers_number = numbers.number(request.headers)
            part = self.parts.get(headers_number)
            if part is None:
                part = self.parts[headers_number] = parse_headers(request.headers)
                self.budget.charge(sum([len(n) + len(v) for n, v in part.cookies]) + 1)
            numbers.last += 1
            found = (numbers.last, headers_number, parse_head(request, part))
            hashed = hash(key)
            if hashed in self.seen:
                self.heads[key] = found
                self.budget.charge(sum(len(n) + len(v) for n, v in key) * 4)
            else:
                self.seen[hashed] = True
                self.budget.charge(1)
        return found
