"""The end of a regular expression, as a looser pattern for the prefilter.

A pattern that is a sequence of items (`a*b(c|d)e`) can only match where the items it ends with
match, one after the other: in an unanchored search, those last items alone match wherever the
whole does (and elsewhere too). So when hyperscan cannot be trusted with a pattern's start (see
`prefilter._RISKY`), its end, if sound, still rules out most values without running the regex.
Anything this does not follow (an alternation at the top, a back reference) gives no tail.
"""

from __future__ import annotations

import re

_QUANTIFIER = re.compile(r"(?:[*+?]|\{\d*(?:,\d*)?\})[?+]?")
_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")
# escapes this follows: a character, a class (`\d` ...), an anchor, a control, `\xHH`
_ESCAPE = re.compile(r"\\(?:[^0-9A-Za-z]|[dDsSwWbBAZzntrfv]|x[0-9A-Fa-f]{2})")


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class that starts at `i` (a `[`); -1 if it never ends."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a `]` first is a character of the class
    while j < len(pattern):
        c = pattern[j]
        if c == "\\":
            j += 2
        elif c == "]":
            return j + 1
        else:
            j += 1
    return -1


def _group_end(pattern: str, i: int) -> int:
    """The index after the group that starts at `i` (a `(`); -1 if it never ends."""
    depth = 0
    j = i
    while j < len(pattern):
        c = pattern[j]
        if c == "\\":
            j += 2
            continue
        if c == "[":
            j = _class_end(pattern, j)
            if j < 0:
                return -1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return -1


def _atom_end(pattern: str, i: int) -> int:
    c = pattern[i]
    if c == "\\":
        escape = _ESCAPE.match(pattern, i)
        return escape.end() if escape is not None else -1
    if c == "[":
        return _class_end(pattern, i)
    if c == "(":
        return _group_end(pattern, i)
    if c in "|)*+?{":
        return -1  # an alternation at the top, or something this does not follow
    return i + 1


def items(pattern: str) -> list[str] | None:
    """The pattern's top-level items (an atom with its quantifier) in order; None when it is
    not a plain sequence of them."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        end = _atom_end(pattern, i)
        if end < 0 or end > len(pattern):
            return None
        quantifier = _QUANTIFIER.match(pattern, end)
        if quantifier is not None:
            end = quantifier.end()
        out.append(pattern[i:end])
        i = end
    return out


def tail(pattern: str, risky: re.Pattern[str]) -> str | None:
    """The longest end of the pattern (its global flags kept) in which `risky` finds nothing,
    shorter than the whole; None when there is none."""
    flags = _FLAGS.match(pattern)
    prefix = flags.group(0) if flags is not None else ""
    body = pattern[len(prefix) :]
    if _BACKREF.search(body) or _FLAGS.search(body):
        return None
    parts = items(body)
    if parts is None:
        return None
    for start in range(1, len(parts)):
        rest = "".join(parts[start:])
        if not risky.search(rest):
            return prefix + rest
    return None
