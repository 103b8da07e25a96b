"""The hyperscan prefilter: which rules could possibly match a value, for one scan of it.

Every positive `@rx` with a static pattern and every `@pm` gets a pattern id. Its scan pattern
is the regex itself in hyperscan's prefilter mode (a superset: a value it does not hit cannot
match), or, where that mode cannot be trusted with the pattern, the regex's necessary literals
(`literals.py`), or a `@pm`'s phrases. A rule's own regex only runs on a value its pattern hit.

Databases are per collection, for every phase (collections read by nearly the same rules, or
holding the same values, share one), holding only the rules at or below the configured paranoia
level, so each value is scanned against the few patterns that can apply to it. `gate.py` uses
them per request.
Without hyperscan the rules simply run their regexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from portcullis.features.waf.gate import CollectionGate, Reader, ids_of, mask, scan
from portcullis.features.waf.literals import necessary_literals
from portcullis.features.waf.operators import (
    BeginsWith,
    EndsWith,
    MacroRx,
    OperatorError,
    Pm,
    Rx,
    StrEq,
    compile_regex,
)
from portcullis.features.waf.ruleset import Rule, RuleSet
from portcullis.features.waf.tail import tail
from portcullis.features.waf.transforms import ALWAYS, may_change

try:
    import hyperscan

    HAVE_HYPERSCAN = True
except ImportError:  # pragma: no cover - optional accelerator
    HAVE_HYPERSCAN = False

# hyperscan 5.4 (the PyPI wheel) misses some matches of `.+` followed later by `\s*`, e.g.
# `@.+=\s*\(` on `@` + 70 bytes + `=(`: such patterns are scanned for their necessary literals
# instead, so the prefilter can never hide a match.
_RISKY = re.compile(r"\.[+*{].*\\s[*?{]", re.S)

# a pattern that hits one of these (`^.*$`, `.`, `(..)$`) hits nearly every value
_PROBES = ("x", "zz")
_FAMILY = {
    "ARGS_GET": "ARGS", "ARGS_POST": "ARGS", "ARGS_GET_NAMES": "ARGS_NAMES", "ARGS_POST_NAMES": "ARGS_NAMES",
    "REQUEST_URI_RAW": "REQUEST_URI",
}  # fmt: skip
_MERGE_SIZE = 0.6  # a collection shares a database when it reads at least this share of it ...
_MERGE_GROWTH = 1.1  # ... and adds few patterns to it


@dataclass
class _Source:
    regex: str | None  # a hyperscan prefilter-mode expression, or
    literals: frozenset[str]  # literals, one of which a matching value contains (caseless)


def _literal(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else f"\\x{ord(c):02x}" for c in text)


def _source(link: Rule) -> _Source | None:
    """What to scan for, for one rule link; None: nothing sound or useful."""
    op = link.operator
    if link.negated or isinstance(op, MacroRx):
        return None
    if isinstance(op, Rx):
        pattern = op.pattern or ""
        compiled = getattr(op, "regex", None)
        if compiled is not None and any(compiled.search(probe) for probe in _PROBES):
            return None  # it matches (nearly) anything: a scan would rule nothing out
        if pattern and pattern.isascii() and not _RISKY.search(pattern):
            return _Source(pattern, frozenset())
        found = _literal_source(pattern)
        if found is not None and not any(lit in probe for lit in found.literals for probe in _PROBES):
            return found
        # no useful literal: the pattern's end, which hyperscan can be trusted with
        end = tail(pattern, _RISKY) if pattern and pattern.isascii() else None
        return _Source(end, frozenset()) if end is not None and not _trivial(end) else found
    if isinstance(op, Pm) and op.phrases and all(p.isascii() for p in op.phrases):
        return _Source(None, frozenset(op.phrases))
    if op.literal and op.literal.isascii():  # @streq, @contains, @beginsWith ...
        # where the operator fixes the literal's place, say so: `@streq GET /` must not hit
        # every request line that starts with it (case kept, as the operator keeps it)
        start = "^" if isinstance(op, StrEq | BeginsWith) else ""
        end = "$" if isinstance(op, StrEq | EndsWith) else ""  # `$` also before a final newline: a superset
        if start or end:
            return _Source(start + _literal(op.literal) + end, frozenset())
        return _Source(None, frozenset({op.literal.lower()}))
    return None


def _trivial(pattern: str) -> bool:
    """The pattern matches (nearly) anything, or `re` cannot tell."""
    try:
        compiled = compile_regex(pattern)
    except OperatorError:
        return True
    return any(compiled.search(probe) for probe in _PROBES)


def _literal_source(pattern: str) -> _Source | None:
    found = necessary_literals(pattern) if pattern else None
    return _Source(None, found) if found and all(s.isascii() for s in found) else None


def _expressions(ids: list[int], sources: list[_Source]) -> tuple[list[bytes], list[int], list[int]]:
    regex_flags = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_DOTALL
    regex_flags |= hyperscan.HS_FLAG_ALLOWEMPTY
    literal_flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH
    exprs: list[bytes] = []
    out_ids: list[int] = []
    flags: list[int] = []
    for i in ids:
        src = sources[i]
        if src.regex is not None:
            exprs.append(src.regex.encode("ascii"))
            out_ids.append(i)
            flags.append(regex_flags)
        else:
            for lit in sorted(src.literals):  # one expression each: a phrase list can be long
                exprs.append(_literal(lit).encode("ascii"))
                out_ids.append(i)
                flags.append(literal_flags)
    return exprs, out_ids, flags


def _compile_db(ids: list[int], sources: list[_Source]) -> Any:
    exprs, out_ids, flags = _expressions(ids, sources)
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=exprs, ids=out_ids, elements=len(exprs), flags=flags)
    return db


def _compiles(source: _Source) -> bool:
    try:
        _compile_db([0], [source])
    except hyperscan.error:
        return False
    return True


def _database(ids: list[int], sources: list[_Source]) -> Any:
    """A database of these pattern ids; a regex hyperscan rejects falls back to its literals,
    and one that hits trivial values is dropped: it would rule nothing out."""
    try:
        db = _compile_db(ids, sources)
    except hyperscan.error:
        for i in ids:
            regex = sources[i].regex
            if regex is not None and not _compiles(sources[i]):
                sources[i] = _literal_source(regex) or _Source(None, frozenset())
        ids = [i for i in ids if sources[i].regex is not None or sources[i].literals]
        if not ids:
            return None
        db = _compile_db(ids, sources)
    trivial: set[int] = set()
    for probe in _PROBES:
        trivial.update(ids_of(scan(db, probe)))
    if trivial:
        for i in trivial:
            sources[i] = _Source(None, frozenset())
        ids = [i for i in ids if i not in trivial]
        if not ids:
            return None
        db = _compile_db(ids, sources)
    return db


def _chains(ruleset: RuleSet) -> list[tuple[int, Rule, Rule]]:
    """(phase, head, link) for every link of every rule."""
    out: list[tuple[int, Rule, Rule]] = []
    for phase, entries in ruleset.phases.items():
        for entry in entries:
            if not isinstance(entry, Rule):
                continue
            link: Rule | None = entry
            while link is not None:
                out.append((phase, entry, link))
                link = link.chained
    return out


def _groups(wanted: dict[tuple[int, str], set[int]]) -> dict[tuple[int, str], frozenset[int]]:
    """Collections read by nearly the same patterns share a database (fewer to compile)."""
    groups: list[tuple[int, set[int]]] = []  # (phase, pattern ids)
    members: list[list[tuple[int, str]]] = []
    for key, ids in sorted(wanted.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1])):
        for index, (phase, group) in enumerate(groups):
            if (
                phase == key[0]
                and len(ids) >= _MERGE_SIZE * len(group)
                and len(group | ids) <= _MERGE_GROWTH * len(group)
            ):
                group |= ids
                members[index].append(key)
                break
        else:
            groups.append((key[0], set(ids)))
            members.append([key])
    return {key: frozenset(group) for (_, group), keys in zip(groups, members, strict=True) for key in keys}


def build_prefilters(ruleset: RuleSet, paranoia: int = 4) -> None:
    """Give prefilterable rule links a pattern id, compile the scan databases and the gates.
    Rules above `paranoia` (the configured level) are left out: they run their regexes."""
    if not HAVE_HYPERSCAN:
        return
    sources: list[_Source] = []
    links: list[tuple[int, Rule, Rule]] = []
    for phase, head, link in _chains(ruleset):
        src = _source(link) if head.paranoia <= paranoia else None
        if src is None:
            continue
        link.prefilter = len(sources)
        sources.append(src)
        links.append((phase, head, link))
    wanted: dict[tuple[int, str], set[int]] = {}
    for phase, _, link in links:
        for sel in link.selectors:
            if not sel.count:
                wanted.setdefault((phase, sel.collection), set()).add(link.prefilter)
    # a collection's values are scanned against one database in every phase, and so are those
    # of collections that hold the same values (ARGS_GET's are ARGS's): a value scanned in
    # phase 1 is found in the scan cache in phase 2
    families: dict[tuple[int, str], set[int]] = {}
    for (_, collection), read in wanted.items():
        families.setdefault((0, _FAMILY.get(collection, collection)), set()).update(read)
    databases: dict[frozenset[int], int] = {}
    ruleset.scan_cache = []
    db_of_family: dict[tuple[int, str], int] = {}
    for key, ids in _groups(families).items():
        if ids not in databases:
            db = _database(sorted(ids), sources)
            databases[ids] = len(ruleset.prefilters) if db is not None else -1
            if db is not None:
                ruleset.prefilters.append(db)
                ruleset.scan_cache.append(ruleset.budget.table({}))
        db_of_family[key] = databases[ids]
    db_of = {(phase, c): db_of_family[(0, _FAMILY.get(c, c))] for phase, c in wanted}
    for phase, _, link in links:
        if not (sources[link.prefilter].regex or sources[link.prefilter].literals):
            link.prefilter = -1
            continue
        link.scan_dbs = tuple(-1 if sel.count else db_of.get((phase, sel.collection), -1) for sel in link.selectors)
    _gates(ruleset, db_of, sources)


def _own_database(ruleset: RuleSet, patterns: int, sources: list[_Source], made: dict[int, int]) -> int:
    """The index of a database of these patterns alone (made once per set), -1 when hyperscan
    will not compile them apart (the reader then scans against its collection's database)."""
    found = made.get(patterns)
    if found is None:
        try:
            db = _compile_db(ids_of(patterns), sources)
        except hyperscan.error:
            found = -1
        else:
            found = len(ruleset.prefilters)
            ruleset.prefilters.append(db)
            ruleset.scan_cache.append(ruleset.budget.table({}))
        made[patterns] = found
    return found


def _gates(ruleset: RuleSet, db_of: dict[tuple[int, str], int], sources: list[_Source]) -> None:
    """Mark the rules a phase-wide scan may rule out: a positive prefiltered head whose targets
    are request data (no counts). The gate scans every item of the collections they read, so a
    pattern without a hit on any of them cannot match the rule either.

    A collection has one gate for every phase, and collections that hold the same values share
    what was found in a value: the readers of all of them, in all phases, look at it at once (a
    reader of another phase only finds more than a rule needs, never less), so a value met in
    phase 1 costs nothing more in phase 2."""
    # family (prefilter._FAMILY) -> key (None: every item) -> pipeline -> pattern ids
    reads: dict[str, dict[str | None, dict[int, set[int]]]] = {}
    used: dict[int, set[str]] = {}  # phase -> the collections its gated rules read
    for phase, entries in ruleset.phases.items():
        for entry in entries:
            if (
                not isinstance(entry, Rule)
                or entry.prefilter < 0
                or not entry.static
                or not entry.selectors
                or any(s.count for s in entry.selectors)
                or any(db < 0 for db in entry.scan_dbs)
            ):
                continue
            entry.gate = True
            pipelines = _stages(ruleset, entry.pipeline) if entry.multimatch else [entry.pipeline]
            for sel in entry.selectors:
                used.setdefault(phase, set()).add(sel.collection)
                by_key = reads.setdefault(_FAMILY.get(sel.collection, sel.collection), {})
                key = sel.key if sel.key_re is None else None
                for pipeline in pipelines:
                    by_key.setdefault(key, {}).setdefault(pipeline, set()).add(entry.prefilter)
    made: dict[str, CollectionGate] = {}
    found_in: dict[str, dict[str, int]] = {}  # family -> value -> what its readers found
    own: dict[int, int] = {}  # patterns -> their own database (`Reader.db`)
    for phase, collections in sorted(used.items()):
        gates: list[CollectionGate] = []
        for collection in sorted(collections):
            gate = made.get(collection)
            if gate is None:
                family = _FAMILY.get(collection, collection)
                readers: dict[str | None, tuple[Reader, ...]] = {}
                for key, by_pipeline in reads[family].items():
                    readers[key] = tuple(
                        Reader(p, mask(ids), ruleset.pipelines[p]) for p, ids in sorted(by_pipeline.items())
                    )
                # a reader that transforms every value scans its outputs against its own patterns
                every = tuple(
                    replace(r, db=_own_database(ruleset, r.patterns, sources, own))
                    if may_change(r.transforms) is ALWAYS
                    else r
                    for r in readers.pop(None, ())
                )
                keyed = {key: found for key, found in readers.items() if key is not None}
                gate = made[collection] = CollectionGate(collection, db_of[(phase, collection)], every, keyed)
                if family not in found_in:
                    found_in[family] = ruleset.budget.table({})
                gate.cache = found_in[family]
                gate.memo = ruleset.budget.table({})  # by the number of this collection's content
            gates.append(gate)
        ruleset.gates[phase] = tuple(gates)


def _stages(ruleset: RuleSet, pipeline: int) -> list[int]:
    """A pipeline and each of its prefixes (multiMatch tries the value after every step)."""
    out: list[int] = []
    while pipeline >= 0:
        out.append(pipeline)
        pipeline = ruleset.parents[pipeline]
    return out
