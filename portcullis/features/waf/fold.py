"""Rules decided when the rule set is compiled, because they only read constants.

The CRS starts every transaction the same way (`SecAction`s that set TX defaults) and then tests
those TX variables over and over: `TX:EXECUTING_PARANOIA_LEVEL "@lt 2"` before every block of
paranoia 2 rules, `&TX:crs_exclusions_drupal|TX:crs_exclusions_drupal "@eq 0"` ... None of that
depends on the request, so it is done here once:

- the request-independent start of phase 1 is run on a blank transaction; a fresh transaction
  starts from the state it left (`Folded.state`) at the first rule that reads the request;
- a later rule that reads only variables (TX, IP ...) that no rule before it can have written
  since is decided in advance: one that cannot match is dropped, one that matches with no other
  effect than its `skip`/`skipAfter` becomes the jump itself;
- rules that no path reaches any more (the paranoia 2-4 blocks at paranoia 1) are dropped.

Anything that could make the run differ keeps a rule: a `ctl` that may remove it or its targets,
a write to what it reads (a `setvar`, a capture) anywhere before it, a `msg`, a disruptive
action. A transaction that does not start fresh (`Transaction.fresh`) runs the plain plans.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import TYPE_CHECKING

from portcullis.features.waf.actions import PERSISTENT, SetVar, template
from portcullis.features.waf.cache import Budget
from portcullis.features.waf.operators import MacroRx, OperatorError, Rx, _Str
from portcullis.features.waf.request import HttpRequest, coarse_source
from portcullis.features.waf.ruleset import Rule, _id_ranges, attach_caches
from portcullis.features.waf.transaction import Transaction

if TYPE_CHECKING:
    from portcullis.features.waf.engine import Evaluator

VARS = ("TX", *PERSISTENT)
KEEP, DROP, GOTO = 0, 1, 2
_STOPS = ("deny", "drop", "allow")
Pos = tuple[int, int]  # (phase, index in the phase's plan)


@dataclass
class Group:
    """Consecutive rules whose first links read only request data with pure operators: in
    collections with the same numbers (cache.Numbers) as a run before, the same first links
    match, so only those rules need to run again (the others cannot match)."""

    end: int
    sources: tuple[str, ...]  # request.source of the collections read
    memo: dict[tuple[int, ...], tuple[int, ...]]  # key -> the rules whose first link matched


@dataclass
class Plan:
    """A phase's rules; after rule i comes `nexts[i]`, or `jumps[i]` when it matched (-1: none).
    `groups[i]`: the group that starts at rule i, if any. `runs[i]`: for a gated rule followed
    by more, the pattern ids (bits) of it and the gated rules after it, and the first rule past
    them: when none of those patterns hit, the whole run is skipped at once."""

    rules: list[Rule]
    nexts: list[int]
    jumps: list[int]
    groups: list[Group | None] = field(default_factory=list)
    runs: list[tuple[int, int] | None] = field(default_factory=list)


def group(plan: Plan, budget: Budget, reads_matched: bool) -> None:
    """Find the plan's groups (two rules or more), and mark the quiet rules: every link reads
    request data alone with a pure operator, and only the last one acts (so a rule that does
    not match leaves nothing behind, unless a rule reads the MATCHED_VAR it leaves)."""
    for rule in plan.rules:
        links = _chain(rule)
        rule.quiet = not reads_matched and all(link.memo is not None for link in links)
        rule.quiet = rule.quiet and not any(_effects(link) for link in links[:-1])
        rule.memo_chain = tuple((link, link.memo) for link in links[1:] if link.memo is not None) if rule.quiet else ()
    n = len(plan.rules)
    plan.groups = [None] * n
    i = 0
    while i < n:
        members: list[Rule] = []
        j = i
        while j < n and plan.rules[j].memo is not None:
            members.append(plan.rules[j])
            j = plan.nexts[j]
        if len(members) >= 2:
            # what the first links read, and for a quiet rule (which a replay may skip after its
            # first link matched) what all its links read, numbered coarsely (fewer numbers to find)
            sources = tuple(
                dict.fromkeys(
                    coarse_source(c) for rule in members for link in (_chain(rule) if rule.quiet else [rule])
                    for c in link.memo_collections
                )
            )
            plan.groups[i] = Group(j, sources, budget.table({}))
            i = j
        else:
            i += 1
    plan.runs = _runs(plan)


def _runs(plan: Plan) -> list[tuple[int, int] | None]:
    """Runs of gated rules (`Plan.runs`), along `nexts`. A run goes on through no group's start
    or end: the loop stops there to replay or record the group."""
    n = len(plan.rules)
    stops = {i for i, grp in enumerate(plan.groups) if grp is not None}
    stops |= {grp.end for grp in plan.groups if grp is not None}
    runs: list[tuple[int, int] | None] = [None] * n
    for i in range(n - 1, -1, -1):
        nxt = plan.nexts[i]
        if not plan.rules[i].gate or nxt >= n or nxt in stops or not plan.rules[nxt].gate:
            continue
        after = runs[nxt] or (1 << plan.rules[nxt].prefilter, plan.nexts[nxt])
        runs[i] = (after[0] | 1 << plan.rules[i].prefilter, after[1])
    return runs


@dataclass
class Snapshot:
    """What the request-independent start of phase 1 leaves in a transaction."""

    tx: dict[str, str]
    persistent: dict[str, dict[str, str]]
    matched: tuple[str, str, str, list[tuple[str, str]]]  # var, name, text, vars
    rule: tuple[int, str, str]  # id, msg, severity

    keys: tuple[str, ...] = ()  # of tx, in order

    def __post_init__(self) -> None:
        self.keys = tuple(self.tx)

    @classmethod
    def of(cls, txn: Transaction) -> Snapshot:
        return cls(
            dict(txn.tx),
            {k: dict(v) for k, v in txn.persistent.items()},
            (txn.matched_var, txn.matched_var_name, txn.matched_text, list(txn.matched_vars)),
            (txn.rule_id, txn.rule_msg, txn.rule_severity),
        )

    def apply(self, txn: Transaction) -> None:
        txn.tx = dict(self.tx)
        txn.tx_dropped += 1  # what was remembered of TX keys is void
        txn.tx_seed, txn.tx_seed_keys, txn.tx_seed_dropped = self, self.keys, txn.tx_dropped
        txn.persistent = {k: dict(v) for k, v in self.persistent.items()}
        txn.matched_var, txn.matched_var_name, txn.matched_text, vars_ = self.matched
        txn.matched_vars = list(vars_)
        txn.rule_id, txn.rule_msg, txn.rule_severity = self.rule


@dataclass
class Folded:
    plans: dict[int, Plan]
    state: Snapshot  # what a fresh transaction starts from (phase 1's plan begins after it)
    reads_matched: bool  # a rule's first link reads the MATCHED_VAR another left


def _chain(rule: Rule) -> list[Rule]:
    out: list[Rule] = []
    link: Rule | None = rule
    while link is not None:
        out.append(link)
        link = link.chained
    return out


def _var_ref(ref: str) -> tuple[str, str] | None:
    """`tx.key` -> ("TX", "key"): a macro that reads a variable store; None for anything else."""
    name, dot, key = ref.partition(".")
    up = name.upper()
    if up in VARS and dot and key:
        return up, key.lower()
    return None


def _reads(link: Rule) -> set[tuple[str, str]] | None:
    """The variables a link reads, when it reads nothing else (its targets, its operator's macros)."""
    reads: set[tuple[str, str]] = set()
    for sel in link.selectors:
        if sel.collection not in VARS or sel.key is None or sel.key_re is not None or sel.exclusions:
            return None
        reads.add((sel.collection, sel.key))
    arg = getattr(link.operator, "arg", "")
    if isinstance(arg, str) and "%{" in arg:
        for ref in template(arg).refs:
            if ref is None:
                continue
            var = _var_ref(ref)
            if var is None:
                return None
            reads.add(var)
    return reads


def stored_reads(plans: dict[int, Plan]) -> frozenset[str]:
    """The persistent collections (IP, GLOBAL ...) worth loading for these plans: those where a
    rule reads a variable (by a target, or by a macro anywhere in its texts) that some rule
    writes. What nothing writes is never stored; what nothing reads need not come back."""
    reads: dict[str, set[str] | None] = {}  # collection -> the keys read (None: any key)
    writes: dict[str, list[tuple[str, bool]]] = {}  # collection -> (key, key is a prefix)

    def read(collection: str, key: str | None) -> None:
        keys = reads.setdefault(collection, set())
        if keys is not None:
            if key is None:
                reads[collection] = None
            else:
                keys.add(key.lower())

    for plan in plans.values():
        for rule in plan.rules:
            for link in _chain(rule):
                for sel in link.selectors:
                    if sel.collection in PERSISTENT:
                        read(sel.collection, sel.key if sel.key_re is None else None)
                texts = [template(getattr(link.operator, "arg", "") or ""), link.msg_template, template(link.logdata)]
                texts += [t for s in link.setvar_ops for t in (s.target, s.value)]
                texts += [c.value for c in link.ctl_ops] + [a.value for a in link.collection_ops]
                for text in texts:
                    for ref in text.refs:
                        name, _, key = (ref or "").partition(".")
                        if name.upper() in PERSISTENT:
                            read(name.upper(), key or None)
                for setvar in link.setvar_ops:
                    _, collection, key, prefix = _written((0, 0), rule, setvar)
                    if collection is None or collection in PERSISTENT:
                        for col in [collection] if collection is not None else PERSISTENT:
                            writes.setdefault(col, []).append((key, prefix))
                            if _adds(setvar, rule):
                                read(col, None if prefix else key)  # `ip.hits=+1` reads it first
                for action in link.collection_ops:
                    if action.kind == "deprecatevar" and action.persistent:
                        read(action.collection, action.name)
                        writes.setdefault(action.collection, []).append((action.name, False))
    needed = set()
    for collection, keys in reads.items():
        written = writes.get(collection, [])
        if written and (
            keys is None or any(k == key or (prefix and k.startswith(key)) for k in keys for key, prefix in written)
        ):
            needed.add(collection)
    return frozenset(needed)


def _adds(setvar: SetVar, head: Rule) -> bool:
    """The setvar may add to or take from what the variable holds (`+1`, or a macro that may
    expand to that; the rule's own id, severity and message are known)."""
    value = setvar.value
    if value.static:
        return value.text[:1] in "+-"
    first, ref = value.parts[0], value.refs[0]
    if isinstance(first, str):
        return first[:1] in "+-"
    ref = (ref or "").lower()
    if ref in ("rule.id", "rule.severity"):
        return False
    if ref == "rule.msg":
        return not head.msg_template.static or head.msg[:1] in "+-"
    return True


def _self_contained(setvar: SetVar) -> bool:
    """A setvar whose macros read only variables and the rule's own match (for the prefix)."""
    for t in (setvar.target, setvar.value):
        for ref in t.refs:
            if ref is None or _var_ref(ref) is not None:
                continue
            if ref.lower() not in ("rule.id", "rule.msg", "rule.severity", "matched_var", "matched_var_name"):
                return False
    return True


class _Analysis:
    """Who writes what, who may be removed, over the whole rule set."""

    def __init__(self, plans: dict[int, Plan], reachable: dict[int, set[int]] | None) -> None:
        self.writes: list[tuple[Pos, str | None, str, bool]] = []  # (pos, collection, key, key is a prefix)
        self.removed_ids: list[tuple[int, int]] = []
        self.removed_tags: set[str] = set()
        self.any_removed = False  # a ctl removes rules it names by macro: any rule may go
        self.reads_matched = False  # a rule's head reads MATCHED_VAR(_NAME) left by an earlier rule
        for phase, plan in plans.items():
            live = reachable.get(phase, set()) if reachable is not None else None
            for index, rule in enumerate(plan.rules):
                if live is not None and index not in live:
                    continue  # never runs: what it would write or remove does not matter
                for link in _chain(rule):
                    self._link((phase, index), rule, link)

    def _link(self, pos: Pos, head: Rule, link: Rule) -> None:
        for setvar in link.setvar_ops:
            self.writes.append(_written(pos, head, setvar))
        if link.capture:
            self.writes.extend((pos, "TX", str(d), False) for d in range(10))
        for action in link.collection_ops:
            # `initcol` brings in every variable of its collection a request before set
            whole = action.kind == "initcol"
            self.writes.append((pos, action.collection, "" if whole else action.name, whole))
        if link is head:
            # what a head reads before it matches itself is the last match of another rule
            texts = [getattr(link.operator, "arg", "")]
            if link.is_action:
                texts += [link.msg, *(s.value.text for s in link.setvar_ops), *(c.value.text for c in link.ctl_ops)]
                texts += [s.target.text for s in link.setvar_ops]
            if any(s.collection in ("MATCHED_VAR", "MATCHED_VAR_NAME") for s in link.selectors) or any(
                isinstance(t, str) and "matched_var" in t.lower() for t in texts
            ):
                self.reads_matched = True
        for ctl in link.ctl_ops:
            if ctl.name in ("ruleremovebyid", "ruleremovetargetbyid", "ruleremovebytag", "ruleremovetargetbytag"):
                if not ctl.value.static:
                    self.any_removed = True
                    continue
                text = ctl.value.text
                if ctl.name.endswith("byid"):
                    try:
                        self.removed_ids.extend(_id_ranges(text.partition(";")[0]))
                    except ValueError:
                        self.any_removed = True
                else:
                    self.removed_tags.add(text.partition(";")[0])

    def removable(self, rule: Rule) -> bool:
        """A ctl may remove the rule, or some of its targets, at run time."""
        if self.any_removed:
            return True
        if any(lo <= rule.id <= hi for lo, hi in self.removed_ids):
            return True
        return any(tag in self.removed_tags for tag in rule.tags)

    def stable(self, var: tuple[str, str], start: Pos, end: Pos) -> bool:
        """No rule between `start` (included) and `end` (excluded) writes the variable."""
        collection, key = var
        for pos, col, written, prefix in self.writes:
            if not start <= pos < end:
                continue
            if col is not None and col != collection:
                continue
            if written == key or (prefix and key.startswith(written)):
                return False
        return True


def _written(pos: Pos, head: Rule, setvar: SetVar) -> tuple[Pos, str | None, str, bool]:
    """What a setvar writes: a known variable, or every variable whose name starts so."""
    if setvar.target.static:
        return pos, setvar.collection, setvar.key, False
    text = ""
    for part, ref in zip(setvar.target.parts, setvar.target.refs, strict=True):
        if ref is None and isinstance(part, str):
            text += part
        elif ref is not None and ref.lower() == "rule.id":
            text += str(head.id)  # the rule's own id: known here
        else:
            break
    collection, dot, key = text.partition(".")
    if not dot:
        return pos, None, "", True  # even the collection is unknown
    return pos, collection.upper(), key.lower(), True


def _blank() -> Transaction:
    return Transaction(HttpRequest("GET", "/"))


def _copy(state: Snapshot) -> Transaction:
    txn = _blank()
    state.apply(txn)
    return txn


def _same(txn: Transaction, state: Snapshot) -> bool:
    return (
        txn.tx == state.tx
        and txn.persistent == state.persistent
        and not txn.matches
        and not txn.removing
        and not txn.removed_targets
        and not txn.removed_targets_by_tag
        and txn.rule_engine == "on"
        and txn.body_processor is None
    )


def fold(evaluator: Evaluator, plans: dict[int, Plan]) -> Folded:
    txn = _blank()
    start = 0
    first = plans.get(1)
    if first is not None:
        start = _prefix(evaluator, first, txn)
    state = Snapshot.of(txn)
    # deciding rules makes others unreachable, whose writes and ctls then no longer count:
    # repeat until nothing changes (each round only decides more, on a smaller set of writers)
    reachable: dict[int, set[int]] | None = None
    positions: dict[int, list[int]] = {}
    while True:
        analysis = _Analysis(plans, reachable)
        folded: dict[int, Plan] = {}
        now: dict[int, set[int]] = {}
        for phase, plan in plans.items():
            origin = start if phase == 1 else 0
            decisions = [KEEP] * len(plan.rules)
            if all(j < 0 or j > i for i, j in enumerate(plan.jumps)):  # no backward jump: no loop
                for index in range(origin, len(plan.rules)):
                    rule = plan.rules[index]
                    decisions[index] = _decide(evaluator, analysis, rule, state, (1, start), (phase, index))
            folded[phase], order = _rebuild(plan, decisions, origin)
            now[phase] = set(order)
            positions[phase] = order
        if now == reachable:
            break
        reachable = now
    # operators whose macros read variables that are constant where the rule runs get the text
    # they would expand to: they become pure (cacheable, memo-able)
    budget = evaluator.ruleset.budget
    for phase, plan in folded.items():
        plan.rules = [
            _specialize(rule, state, analysis, (1, start), (phase, index), budget)
            for rule, index in zip(plan.rules, positions[phase], strict=True)
        ]
    return Folded(folded, state, analysis.reads_matched)


def _prefix(evaluator: Evaluator, plan: Plan, txn: Transaction) -> int:
    """Run the request-independent start of phase 1 on a blank transaction; where it ended."""
    i = 0
    while i < len(plan.rules):
        rule = plan.rules[i]
        links = _chain(rule)
        if any(_reads(link) is None for link in links):
            break
        trial = _copy(Snapshot.of(txn))
        matched = evaluator.step(trial, rule)
        if not matched and _same(trial, Snapshot.of(txn)):
            i = plan.nexts[i]  # does not match, changes nothing: as if absent
            continue
        if (
            rule.msg
            or rule.disruptive in _STOPS
            or any(link.ctl_ops or link.collection_ops for link in links)
            or not all(_self_contained(s) for link in links for s in link.setvar_ops)
        ):
            break
        if evaluator.step(txn, rule) and plan.jumps[i] >= 0:
            if plan.jumps[i] <= i:
                break  # a loop: not run ahead of time
            i = plan.jumps[i]
        else:
            i = plan.nexts[i]
    return i


def _effects(link: Rule) -> bool:
    return bool(link.setvar_ops or link.ctl_ops or link.collection_ops or link.capture)


def _decide(evaluator: Evaluator, analysis: _Analysis, rule: Rule, state: Snapshot, since: Pos, pos: Pos) -> int:
    if analysis.removable(rule):
        return KEEP  # removing it (or its targets) would change the run
    fast = rule.fast_tx is not None or bool(rule.fast_multi)
    if not fast and analysis.reads_matched:
        return KEEP  # running it would leave MATCHED_VAR for a later rule to read
    # link by link, as the rule runs: a link that fails on constants ends the rule; a link that
    # matches and acts (on what it reads at run time, which may differ) keeps it, and so does a
    # link that reads the request, unless a later link fails on constants and nothing before it
    # acts (CRS 949100: the client's IP record, then `TX:DO_REPUT_BLOCK` left at 0)
    txn = _copy(state)
    txn.matched_vars = []
    undecided = False
    for link in _chain(rule):
        reads = _reads(link)
        if reads is None or not all(analysis.stable(var, since, pos) for var in reads):
            if _effects(link):
                return KEEP  # it may act before a later link fails
            undecided = True
            continue
        if not evaluator.link_matches(txn, link, rule):
            return DROP
        if _effects(link):
            return KEEP
    if undecided or rule.msg or rule.disruptive in _STOPS:
        return KEEP
    return GOTO


def _constant_arg(link: Rule, analysis: _Analysis, state: Snapshot, since: Pos, pos: Pos) -> str | None:
    """What the operator's argument expands to, when its macros read only constants here."""
    op = link.operator
    arg = getattr(op, "arg", None)
    if not isinstance(op, (_Str, MacroRx)) or not isinstance(arg, str) or "%{" not in arg:
        return None
    text = template(arg)
    for ref in text.refs:
        if ref is None:
            continue
        var = _var_ref(ref)
        if var is None or not analysis.stable(var, since, pos):
            return None
    return text.render(_copy(state))


def _specialize(rule: Rule, state: Snapshot, analysis: _Analysis, since: Pos, pos: Pos, budget: Budget) -> Rule:
    """The rule, or a copy whose links have constant operator arguments filled in."""
    args = [_constant_arg(link, analysis, state, since, pos) for link in _chain(rule)]
    if all(a is None for a in args):
        return rule
    copies: list[Rule] = []
    for link, arg in zip(_chain(rule), args, strict=True):
        copy = replace(link)
        if arg is not None:
            with suppress(OperatorError, ValueError):  # else left as it was: expanded at run time
                op = link.operator
                copy.operator = op.with_arg(arg) if isinstance(op, _Str) else Rx(arg)
            attach_caches(copy, budget)
        copies.append(copy)
    for link, after in pairwise(copies):
        link.chained = after
    copies[-1].chained = None
    return copies[0]


def _rebuild(plan: Plan, decisions: list[int], start: int) -> tuple[Plan, list[int]]:
    """The plan without dropped, decided and unreachable rules (jumps and nexts renumbered),
    and the indexes the rules it keeps had."""
    n = len(plan.rules)

    def resolve(i: int) -> int:
        # where control really goes from i: past dropped rules, through decided jumps
        while i < n and decisions[i] != KEEP:
            i = plan.jumps[i] if decisions[i] == GOTO and plan.jumps[i] >= 0 else plan.nexts[i]
        return i

    reachable: set[int] = set()
    todo = [resolve(start)]
    while todo:
        i = todo.pop()
        if i >= n or i in reachable:
            continue
        reachable.add(i)
        todo.append(resolve(plan.nexts[i]))
        if plan.jumps[i] >= 0:
            todo.append(resolve(plan.jumps[i]))
    order = sorted(reachable)
    index = {old: new for new, old in enumerate(order)}
    index[n] = len(order)
    rules = [plan.rules[i] for i in order]
    nexts = [index[resolve(plan.nexts[i])] for i in order]
    jumps = [index[resolve(plan.jumps[i])] if plan.jumps[i] >= 0 else -1 for i in order]
    return Plan(rules, nexts, jumps), order
