"""A hyperscan prefilter: every static `@rx` of a transformation pipeline in one database.

A value is scanned once per pipeline; a rule's own regex only runs when the database says
its pattern may match (prefilter mode: a superset, never a miss). Without hyperscan the
rules simply run their regexes.
"""

from __future__ import annotations

import re
from typing import Any

from portcullis.features.waf.operators import Rx
from portcullis.features.waf.ruleset import Rule, RuleSet

try:
    import hyperscan

    HAVE_HYPERSCAN = True
except ImportError:  # pragma: no cover - optional accelerator
    HAVE_HYPERSCAN = False

_BAD_INDEX = re.compile(r"Expression (?:number )?(\d+)")


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
            if not m:
                return None, []
            del kept[int(m.group(1))]
    return None, []


def build_prefilters(ruleset: RuleSet) -> None:
    if not HAVE_HYPERSCAN:
        return
    by_pipeline: dict[int, list[Rule]] = {}
    for link in _links(ruleset):
        if isinstance(link.operator, Rx) and not link.negated and not link.multimatch:
            pattern = link.operator.pattern or ""
            if pattern.isascii():
                by_pipeline.setdefault(link.pipeline, []).append(link)
    for pipeline, links in by_pipeline.items():
        if len(links) < 2:
            continue
        patterns = [(link.operator.pattern or "").encode("ascii") for link in links]
        db, kept = _compile(patterns)
        if db is None:
            continue
        for index in kept:
            links[index].prefilter = index
        ruleset.prefilters[pipeline] = db
