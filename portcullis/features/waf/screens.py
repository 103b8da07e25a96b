"""Screens: one test over all the values of a target that proves none of them can match.

A rule reads each value of a target on its own (transform, cache, operator), which costs a few
Python calls per value; for a value never seen before, nothing is cached. Some operators match
only values holding some character (`Operator.needs`: for `@validateByteRange` one outside the
ranges, for `@detectXSS` a `<` or `=`). When the
transformations can only change a value that holds one of a known set of characters too
(`transforms.CHANGES`, and no test on a first or last character), a value with none of either
set is left as it is and cannot match: a regex class over the values joined together (a test
on single characters, so joining them changes nothing) clears the whole target at once. A
screen that finds something proves nothing: the values are read one by one, as without it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from portcullis.features.waf.operators import Operator
from portcullis.features.waf.transforms import CHANGES, Transform

_MAX_NEEDLES = 8  # more characters than this: one regex class (slower than `in` per character)


@dataclass(frozen=True, slots=True)
class Screen:
    """Finds any of `chars`, or (`nonascii`) any character past 0x7f, in a text."""

    chars: str
    nonascii: bool
    regex: re.Pattern[str] | None  # `chars` as a class, when they are many

    def finds(self, text: str) -> bool:
        if self.nonascii and not text.isascii():
            return True
        if self.regex is not None:
            return self.regex.search(text) is not None
        # a `in` each: a memchr, far faster than `re` over a long value
        return any(char in text for char in self.chars)


def change_chars(funcs: Sequence[Transform]) -> tuple[str, bool] | None:
    """The characters one of which a value holds when one of these transformations may change
    it, and whether any non-ASCII character may; None when a change may depend on more than
    single characters (a first or last character, the value ".")."""
    chars: set[str] = set()
    nonascii = False
    for fn in funcs:
        spec = CHANGES.get(fn)
        if spec is None or spec.ends or spec.dot:
            return None
        chars.update(spec.chars)
        # a case change is tested on the whole value (`v.lower() != v`): non-ASCII letters too
        nonascii = nonascii or spec.nonascii or any(c.isalpha() for c in spec.chars)
        for seq in spec.seqs:
            chars.update(seq)  # a value holding the sequence holds its characters
    return "".join(sorted(chars)), nonascii


def screen_of(op: Operator, negated: bool, funcs: Sequence[Transform]) -> Screen | None:
    """A screen that finds nothing in the joined values of a target only when no value can
    match (see above); None when there is none for this operator and these transformations."""
    if negated or not op.needs:
        return None
    changing = change_chars(funcs)
    if changing is None:
        return None
    chars, nonascii = changing
    needed = op.needs
    if nonascii:
        needed = "".join(c for c in needed if c.isascii())  # found by the non-ASCII test
    chars = "".join(sorted(set(needed + chars)))
    regex = re.compile("[" + "".join(re.escape(c) for c in chars) + "]") if len(chars) > _MAX_NEEDLES else None
    return Screen(chars, nonascii, regex)


def none_can_match(screen: Screen, pairs: Sequence[tuple[str, str]]) -> bool:
    """The screen finds nothing in the values of these (name, value) pairs."""
    return not screen.finds("".join([value for _, value in pairs]))
