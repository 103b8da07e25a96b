"""Replays: what a matching link did to a transaction, kept to be done again in one step.

A link that reads request data alone with a pure operator finds the same matches in values
with the same number (cache.Numbers). When all it does on a match is capture and set TX
variables from what it matched (`setvar:'tx.header_name_%{tx.0}=/%{tx.0}/'`, CRS 920450 on
every request header), what it writes is the same too: the matched variables and the TX
writes, in order, are kept per number (`Rule.replay`) and applied at once the next time,
instead of a transform, a cache lookup, a capture and a setvar per value.

Only writes that cannot depend on what TX held before qualify: no arithmetic (`=+5`), no
removal, no macro but the capture groups and the matched variable. A value that starts with
a macro (`setvar:tx.ua_hash=%{MATCHED_VAR}`, CRS 901318 on every request) is arithmetic only
when what it expands to is (`+5`): a run where it was is not kept. A capture group a match
did not set (fewer groups than the setvar reads) would read an older value: such a run is
not kept either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from portcullis.features.waf.actions import arithmetic

if TYPE_CHECKING:
    from portcullis.features.waf.actions import SetVar, Template
    from portcullis.features.waf.cache import Budget
    from portcullis.features.waf.ruleset import Rule
    from portcullis.features.waf.transaction import Transaction

Pairs = list[tuple[str, str]]
_DIGITS = frozenset("0123456789")
_DIGIT_KEYS = tuple("0123456789")
_MATCHED = ("matched_var", "matched_var_name")


@dataclass(frozen=True, slots=True)
class Replay:
    """What a link's matches left: the matched variables, TX writes in order, the last match."""

    matched: tuple[tuple[str, str], ...]
    writes: tuple[tuple[str, str], ...]
    last: tuple[str, str, str]  # matched_var, matched_var_name, matched_text

    def apply(self, txn: Transaction) -> None:
        txn.matched_vars.extend(self.matched)
        txn.tx.update(self.writes)  # in the order written: same keys, same order, same values
        txn.matched_var, txn.matched_var_name, txn.matched_text = self.last


def _groups_read(text: Template, capture: bool) -> int | None:
    """How many capture groups a template needs set (the highest `%{tx.N}` + 1); None when it
    reads anything else than the groups and the matched variable."""
    needs = 0
    for ref in text.refs:
        if ref is None:
            continue
        low = ref.lower()
        name, _, key = low.partition(".")
        if capture and name == "tx" and len(key) == 1 and key in _DIGITS:
            needs = max(needs, int(key) + 1)
        elif low not in _MATCHED:
            return None
    return needs


def _setvar_needs(setvar: SetVar, capture: bool) -> int | None:
    if setvar.remove or setvar.collection != "TX":
        return None  # a removal depends on what is there; another store is not replayed
    value = setvar.value
    if setvar.has_value and _opening(setvar)[:1] in ("+", "-"):
        return None  # arithmetic on what TX held (a macro first is looked at as it expands)
    target = _groups_read(setvar.target, capture)
    text = _groups_read(value, capture)
    if target is None or text is None:
        return None
    return max(target, text)


def _opening(setvar: SetVar) -> str:
    """The literal text a setvar's value starts with ("" when it starts with a macro)."""
    parts = setvar.value.parts
    first = parts[0] if parts else setvar.value.text
    return first if isinstance(first, str) else ""


def groups_needed(link: Rule) -> int | None:
    """The capture groups a match must set for the link to be replayed (0: none), or None when
    it cannot be: it reads more than one target, has no memo (not request data with a pure
    operator), is negated, runs a ctl, or writes what may depend on TX."""
    if link.memo is None or len(link.selectors) != 1 or link.negated or link.ctl_ops or link.is_action:
        return None
    if link.collection_ops:
        return None  # it loads or changes a persistent collection
    if not link.setvar_ops and not link.capture:
        return None  # nothing it writes: `memo` and the operator cache do as well
    needs = 0
    for setvar in link.setvar_ops:
        found = _setvar_needs(setvar, link.capture)
        if found is None:
            return None
        needs = max(needs, found)
    return needs


class Trail:
    """The writes of a link's run, noted as they happen, to make its replay."""

    __slots__ = ("before", "number", "replays", "whole", "writes")

    def __init__(self, txn: Transaction, replays: dict[int, Replay], number: int) -> None:
        self.before = len(txn.matched_vars)
        self.replays = replays  # the link's, where the replay goes under `number`
        self.number = number
        self.writes: Pairs = []
        self.whole = True  # every match set the capture groups the setvars read

    def act(self, txn: Transaction, link: Rule, caps: list[str] | None) -> None:
        """A match's captures and setvars (as `Evaluator._hit` does them), each write noted."""
        if caps is None or len(caps) < link.replay_groups:
            self.whole = False
        tx = txn.tx
        writes = self.writes
        if caps and link.capture:
            for digit, cap in zip(_DIGIT_KEYS, caps[:10], strict=False):
                tx[digit] = cap
                writes.append((digit, cap))
        for setvar in link.setvar_ops:
            if setvar.has_value and not _opening(setvar) and arithmetic(setvar.value.render(txn)):
                self.whole = False  # a macro that expanded to `+5`: it added to what TX held
            key = setvar.apply(txn)
            writes.append((key, tx[key]))

    def keep(self, txn: Transaction, budget: Budget) -> None:
        """The run matched: keep what it did, when it can be replayed."""
        if not self.whole:
            return
        last = (txn.matched_var, txn.matched_var_name, txn.matched_text)
        done = Replay(tuple(txn.matched_vars[self.before :]), tuple(self.writes), last)
        self.replays[self.number] = done
        budget.chars += sum([len(k) + len(v) for k, v in done.writes]) + 1
        budget.entries += 1
