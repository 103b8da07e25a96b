"""Necessary literals of a regular expression: a set of strings such that every match of the
pattern contains at least one of them (compared case-insensitively).

The prefilter scans for these literals where hyperscan's own prefilter mode cannot be trusted
with a pattern (see `prefilter.py`): a value that contains none of them cannot match, so the
rule's regex need not run. Parsed with Python's own regex parser, so the analysis follows the
syntax `re` compiles; anything it does not understand counts as "no constraint", never as a
literal, which keeps the set sound (a superset of what can match).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from itertools import product
from typing import Any

_parser: Any = importlib.import_module("re._parser")
_C: Any = importlib.import_module("re._constants")

_MAX_SET = 64  # more alternatives than this: too weak (and too costly) to be worth it
_MAX_CLASS = 6  # a character class expands to its characters up to this many


@dataclass(frozen=True, slots=True)
class _Info:
    exact: frozenset[str] | None  # every string the node can match, when few; "" = empty match
    need: frozenset[str] | None  # every match contains one of these; None: no constraint


_EMPTY = _Info(frozenset({""}), None)
_UNKNOWN = _Info(None, None)


def necessary_literals(pattern: str) -> frozenset[str] | None:
    """Lower-case literals, one of which every match contains; None when there is no such set."""
    try:
        tree = _parser.parse(pattern, 0)
    except Exception:  # the parser's own error types, recursion on huge patterns
        return None
    try:
        info = _sequence(list(tree.data))
    except RecursionError:
        return None
    need = _need_of(info)
    return _minimal(need) if need else None


def _need_of(info: _Info) -> frozenset[str] | None:
    if info.need is not None:
        return info.need
    if info.exact is not None and "" not in info.exact:
        return info.exact
    return None


def _minimal(strings: frozenset[str]) -> frozenset[str]:
    """Drop a literal that contains another: a value with the longer one has the shorter too."""
    ordered = sorted(strings, key=len)
    kept: list[str] = []
    for s in ordered:
        if not any(k in s for k in kept):
            kept.append(s)
    return frozenset(kept)


def _score(strings: frozenset[str]) -> tuple[int, int]:
    # longer literals rule out more values; fewer alternatives cost less
    return (min(min(len(s) for s in strings), 4), -len(strings))


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _score(a) >= _score(b) else b


def _char(code: int) -> str | None:
    # only ASCII: case folding (`re.A`) and the scan's caseless matching agree there
    return chr(code).lower() if code < 128 else None


def _node(op: Any, av: Any) -> _Info:
    name = str(op)
    if name == "LITERAL":
        c = _char(av)
        return _Info(frozenset({c}), None) if c is not None else _UNKNOWN
    if name == "IN":
        return _char_class(av)
    if name in ("AT", "ASSERT", "ASSERT_NOT"):
        return _EMPTY  # zero width: a match contains no literal of it
    if name == "SUBPATTERN":
        return _sequence(list(av[3]))
    if name == "ATOMIC_GROUP":
        return _sequence(list(av))
    if name == "BRANCH":
        return _branch(av[1])
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return _repeat(av[0], av[1], _sequence(list(av[2])))
    return _UNKNOWN  # ANY, NOT_LITERAL, CATEGORY, GROUPREF ...


def _char_class(items: Any) -> _Info:
    chars: set[str] = set()
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            c = _char(av)
            if c is None:
                return _UNKNOWN
            chars.add(c)
        elif name == "RANGE":
            lo, hi = av
            if hi - lo > _MAX_CLASS or hi >= 128:
                return _UNKNOWN
            chars.update(chr(code).lower() for code in range(lo, hi + 1))
        else:  # NEGATE, CATEGORY
            return _UNKNOWN
        if len(chars) > _MAX_CLASS:
            return _UNKNOWN
    return _Info(frozenset(chars), None) if chars else _UNKNOWN


def _branch(alternatives: Any) -> _Info:
    infos = [_sequence(list(alt)) for alt in alternatives]
    exact: frozenset[str] | None = None
    if all(i.exact is not None for i in infos):
        union = frozenset().union(*(i.exact for i in infos if i.exact is not None))
        exact = union if len(union) <= _MAX_SET else None
    needs = [_need_of(i) for i in infos]
    need: frozenset[str] | None = None
    if all(n is not None for n in needs):
        union = frozenset().union(*(n for n in needs if n is not None))
        need = _minimal(union) if len(union) <= _MAX_SET * 4 else None
    return _Info(exact, need)


def _repeat(lo: int, hi: int, sub: _Info) -> _Info:
    if lo == 0:
        if hi == 1 and sub.exact is not None:
            return _Info(sub.exact | {""}, None)
        return _UNKNOWN if hi != 0 else _EMPTY
    need = _need_of(sub)
    if lo == 1 and hi == 1:
        return _Info(sub.exact, need)
    return _Info(None, need)


def _product(a: frozenset[str], b: frozenset[str]) -> frozenset[str] | None:
    if len(a) * len(b) > _MAX_SET:
        return None
    return frozenset(x + y for x, y in product(a, b))


def _sequence(items: list[tuple[Any, Any]]) -> _Info:
    """A concatenation: the best of its parts' literals and of runs of adjacent exact parts."""
    best: frozenset[str] | None = None
    whole: frozenset[str] | None = frozenset({""})
    run: frozenset[str] | None = frozenset({""})
    for op, av in items:
        info = _node(op, av)
        best = _better(best, _need_of(info))
        if whole is not None:
            whole = _product(whole, info.exact) if info.exact is not None else None
        if info.exact is None:
            best = _better(best, _need_of(_Info(run, None)))
            run = frozenset({""})
            continue
        grown = _product(run, info.exact) if run is not None else None
        if grown is None:
            best = _better(best, _need_of(_Info(run, None)))
            grown = info.exact
        run = grown
    best = _better(best, _need_of(_Info(run, None)))
    return _Info(whole, best)
