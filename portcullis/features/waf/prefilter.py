"""A hyperscan prefilter: every static `@rx` (and phrase `@pm`) in one database.

A transformed value is scanned once, whatever pipelines produced it; a rule's own regex only
runs when the database says its pattern may match (prefilter mode: a superset, never a miss). Without hyperscan the
rules simply run their regexes.
"""

from __future__ import annotations

import re
from typing import Any

from portcullis.features.waf.operators import Pm, Rx
from portcullis.features.waf.ruleset import Rule, RuleSet

try:
    import hyperscan

    HAVE_HYPERSCAN = True
except ImportError:  # pragma: no cover - optional accelerator
    HAVE_HYPERSCAN = False

_BAD_INDEX = re.compile(r"Expression (?:number )?(\d+)")

# hyperscan 5.4 (the PyPI wheel) misses some matches of `.+` followed later by `\s*`, e.g.
# `@.+=\s*\(` on `@` + 70 bytes + `=(`: such patterns are left out of the prefilter (their
# rules always run the regex), so the prefilter can never hide a match.
_RISKY = re.compile(r"\.[+*{].*\\s[*?{]", re.S)


_PROBES = (b"", b"x", b"zz")


def _scan(db: Any, value: bytes) -> set[int]:
    hits: set[int] = set()

    def on_match(pattern_id: int, start: int, end: int, flags: int, context: object) -> bool | None:
        hits.add(pattern_id)
        return None

    db.scan(value, match_event_handler=on_match)
    return hits


def _literal(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else f"\\x{ord(c):02x}" for c in text)


def _links(ruleset: RuleSet) -> list[Rule]:
    out: list[Rule] = []
    for entries in ruleset.phases.values():
        for entry in entries:
            link: Rule | None = entry if isinstance(entry, Rule) else None
            while link is not None:
                out.append(link)
                link = link.chained
    return out


def _compile(patterns: list[bytes]) -> tuple[Any, list[int]]:
    """Compile, dropping patterns hyperscan rejects; returns the database and kept indexes."""
    kept = list(range(len(patterns)))
    flags = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_DOTALL
    flags |= hyperscan.HS_FLAG_ALLOWEMPTY
    while kept:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            db.compile(
                expressions=[patterns[i] for i in kept],
                ids=kept,
                elements=len(kept),
                flags=[flags] * len(kept),
            )
            return db, kept
        except hyperscan.error as exc:
            m = _BAD_INDEX.search(str(exc))
            if m:
                del kept[int(m.group(1))]
                continue
            kept = [i for i in kept if _compiles(patterns[i], flags)]
            if not kept:
                break
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            try:
                db.compile(expressions=[patterns[i] for i in kept], ids=kept, elements=len(kept),
                           flags=[flags] * len(kept))  # fmt: skip
            except hyperscan.error:
                return None, []
            return db, kept
    return None, []


def _compiles(pattern: bytes, flags: int) -> bool:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=[pattern], ids=[0], elements=1, flags=[flags])
    except hyperscan.error:
        return False
    return True


def build_prefilters(ruleset: RuleSet) -> None:
    if not HAVE_HYPERSCAN:
        return
    by_pipeline: dict[int, list[Rule]] = {}
    sources: dict[int, str] = {}
    for link in _links(ruleset):
        if link.negated or link.multimatch:
            continue
        pattern = ""
        if isinstance(link.operator, Rx):
            pattern = link.operator.pattern or ""
            if _RISKY.search(pattern):
                continue
        elif isinstance(link.operator, Pm) and link.operator.phrases:
            # a phrase set is a caseless alternation of literals
            pattern = "(?i)(?:" + "|".join(_literal(p) for p in link.operator.phrases) + ")"
        if pattern and pattern.isascii():
            sources[id(link)] = pattern
            by_pipeline.setdefault(link.pipeline, []).append(link)
    # one database for every pipeline: a transformed value is scanned once, whichever pipelines
    # produced it (clean values come out of most pipelines unchanged); pattern ids are global
    links = [link for group in by_pipeline.values() for link in group]
    db, kept = _compile([sources[id(link)].encode("ascii") for link in links])
    if db is not None:
        # a pattern that hits even these (`^.*$`, `.`, `(..)$` ...) hits nearly every value: it
        # rules nothing out and costs a callback per scan, so its rules just run their regex
        trivial: set[int] = set()
        for probe in _PROBES:
            trivial |= _scan(db, probe)
        if trivial:
            links = [links[i] for i in kept if i not in trivial]
            db, kept = _compile([sources[id(link)].encode("ascii") for link in links])
    if db is not None:
        for index in kept:
            links[index].prefilter = index
            ruleset.prefilters[links[index].pipeline] = db
    _gates(ruleset)


def _gates(ruleset: RuleSet) -> None:
    """Mark the rules a phase-wide scan may rule out: a positive prefiltered head whose targets
    are static (no counts). Its values are a subset of the items the phase's gated rules of its
    pipeline read, so a pattern without a hit on any of them cannot match the rule either."""
    for phase, entries in ruleset.phases.items():
        wanted: dict[int, dict[str, set[str] | None]] = {}
        for entry in entries:
            if (
                not isinstance(entry, Rule)
                or entry.prefilter < 0
                or entry.target_key is None
                or entry.negated
                or entry.multimatch
                or entry.pipeline not in ruleset.prefilters
                or not entry.targets
                or any(t.count for t in entry.targets)
            ):
                continue
            entry.gate = True
            reads = wanted.setdefault(entry.pipeline, {})
            for t in entry.targets:
                keys = reads.get(t.collection, set())
                if keys is None:
                    continue
                if t.key is None:  # the whole collection, or keys by regex
                    reads[t.collection] = None
                else:
                    keys.add(t.key)
                    reads[t.collection] = keys
        for pipeline, reads in wanted.items():
            ruleset.gate_collections[(phase, pipeline)] = tuple(
                (name, None if keys is None else frozenset(keys)) for name, keys in sorted(reads.items())
            )
