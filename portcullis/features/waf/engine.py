"""Evaluate a compiled rule set against one transaction, phase by phase."""

from __future__ import annotations

import operator
from collections.abc import Callable

from mypy_extensions import mypyc_attr

from portcullis.features.waf.actions import Ctl
from portcullis.features.waf.cache import Budget
from portcullis.features.waf.fold import Plan, fold, group, stored_reads
from portcullis.features.waf.gate import hits, phase_hits, through
from portcullis.features.waf.operators import Captures, Expander, Operator
from portcullis.features.waf.replay import Trail
from portcullis.features.waf.ruleset import Rule, RuleSet, _id_ranges
from portcullis.features.waf.screens import none_can_match
from portcullis.features.waf.seclang import TargetSpec, parse_targets
from portcullis.features.waf.transaction import Match, Transaction
from portcullis.features.waf.variables import Selected

_STOPS = ("deny", "drop", "allow")
_DIGITS = tuple(str(d) for d in range(10))
_MISS: list[str] = []  # not in an operator cache (a cached result is a list or None)


def _multimatch_values(rule: Rule, value: str, budget: Budget, changes: Callable[[str], bool]) -> tuple[str, ...]:
    """The value, then each different output of the rule's transformations (cached per rule);
    `changes` is the pipeline's test (`RuleSet.changes`): a value no step changes is alone."""
    cache = rule.stages
    if cache is not None:
        found = cache.get(value)
        if found is not None:
            return found
    values = [value]
    if changes(value):
        for fn in rule.transforms:
            nxt = fn(values[-1])
            if nxt != values[-1]:
                values.append(nxt)
    out = tuple(values)  # a tuple of str: the collector stops walking it
    if cache is not None:
        cache[value] = out
        budget.chars += sum([len(v) for v in values])
        budget.entries += 1
    return out


def _operator(
    op: Operator, cache: dict[str, Captures] | None, value: str, expand: Expander, budget: Budget
) -> Captures:
    """The operator's result on a value, through its cache when it is pure (`Rule.op_cache`)."""
    if cache is None:
        return op(value, expand)
    caps = cache.get(value, _MISS)
    if caps is _MISS:
        caps = cache[value] = op(value, expand)
        budget.chars += len(value)
        budget.entries += 1
    return caps


def _memo_fails(txn: Transaction, link: Rule, memo: dict[int, bool]) -> bool:
    """The link found nothing before in the values it reads now (`Rule.memo`); the first link
    of a rule of one target is tested by the caller."""
    if txn.removed_targets or txn.removed_targets_by_tag:
        return False
    numbers = txn.numbers
    width = len(link.selectors)
    for index, sel in enumerate(link.selectors):
        if (numbers.get(sel.source) or txn.number(sel.source)) * width + index not in memo:
            return False
    return True


def _chain_fails(txn: Transaction, links: tuple[tuple[Rule, dict[int, bool]], ...]) -> bool:
    """A later link of a quiet rule (`Rule.memo_chain`) found nothing before in what it reads
    now: the rule fails wherever its run stops, and the links before leave nothing behind."""
    return any(_memo_fails(txn, link, memo) for link, memo in links)


def _removed_targets(txn: Transaction, head: Rule) -> list[TargetSpec] | None:
    """Targets a `ctl:ruleRemoveTargetById/ByTag` took from this rule in this transaction."""
    extra = txn.removed_targets.get(head.id)
    if txn.removed_targets_by_tag:
        tagged = [t for tag, t in txn.removed_targets_by_tag if tag in head.tags]
        if tagged:
            extra = (extra or []) + tagged
    return extra


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests count what it runs in a subclass
class Evaluator:
    """Runs the phases of a rule set; the set is shared, the transaction is per request."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        # per phase: its rules without the markers, and where each jumps when it matches (the
        # index of the first rule after its skipAfter marker, or `skip` rules on; -1: the next)
        self.plans: dict[int, Plan] = {}
        for phase, entries in ruleset.phases.items():
            before = [0] * (len(entries) + 1)  # before[j]: how many rules entries[:j] holds
            for j, entry in enumerate(entries):
                before[j + 1] = before[j] + isinstance(entry, Rule)
            rules: list[Rule] = []
            jumps: list[int] = []
            markers = ruleset.markers.get(phase, {})
            for j, entry in enumerate(entries):
                if not isinstance(entry, Rule):
                    continue
                rules.append(entry)
                if entry.skip_after:
                    jumps.append(before[markers.get(entry.skip_after, len(entries))])
                elif entry.skip:
                    jumps.append(before[min(len(entries), j + 1 + entry.skip)])
                else:
                    jumps.append(-1)
            if rules:
                self.plans[phase] = Plan(rules, list(range(1, len(rules) + 1)), jumps)
        self.first_phase = min(self.plans, default=1)
        # the same plans with what does not depend on the request decided (fold.py)
        self.folded = fold(self, self.plans)
        # a collection that no rule left to run reads need not be loaded from one request to the next
        ruleset.shared.stored.folded_reads = stored_reads(self.folded.plans)
        for folded_plan in self.folded.plans.values():
            group(folded_plan, ruleset.budget, self.folded.reads_matched)

    def run_phase(self, txn: Transaction, phase: int) -> None:
        if txn.disruptive is not None or txn.allowed or txn.rule_engine == "off":
            return
        folded = txn.folded
        if folded is None:
            # decided once per transaction: a fresh one starts from the folded state
            folded = txn.folded = phase <= self.first_phase and txn.fresh()
            if folded:
                self.folded.state.apply(txn)
        plan = (self.folded.plans if folded else self.plans).get(phase)
        if plan is None:
            return
        rules, nexts, jumps, groups, runs = plan.rules, plan.nexts, plan.jumps, plan.groups, plan.runs
        # a rule whose first link fails leaves nothing a later rule reads (fold.Folded.reads_matched)
        quick = folded and not self.folded.reads_matched
        gate = -1  # the phase's prefilter hits (a bit set), once needed
        numbers = txn.numbers
        # groups (fold.Group): `replay` runs only the rules whose first link matched when the
        # group last met the same collections; `record` notes them on a first meeting
        replay: tuple[int, ...] = ()
        replay_at = replay_end = -1
        record: list[int] | None = None
        memo: dict[tuple[int, ...], tuple[int, ...]] = {}
        key: tuple[int, ...] = ()
        record_end = -1
        i, n = 0, len(rules)
        while i < n:
            if replay_end >= 0:
                if txn.removing or txn.removed_targets or txn.removed_targets_by_tag:
                    replay_end = -1  # a ctl changed what rules see: run the rest in full
                elif i < replay_end:
                    while replay_at < len(replay) and replay[replay_at] < i:
                        replay_at += 1
                    i = replay[replay_at] if replay_at < len(replay) else replay_end
                if i >= replay_end:
                    replay_end = -1
                if i >= n:
                    break
            if record is not None and i == record_end:
                memo[key] = tuple(record)
                self.ruleset.budget.charge(len(key) + len(record))
                record = None
            entry = rules[i]
            here = i
            i = nexts[here]
            grp = groups[here] if groups else None
            if grp is not None and replay_end < 0 and record is None and not (
                txn.removing or txn.removed_targets or txn.removed_targets_by_tag
            ):
                memo = grp.memo
                key = tuple([(numbers.get(c) or txn.number(c)) for c in grp.sources])
                found = memo.get(key)
                if found is not None:
                    replay, replay_at, replay_end = found, 0, grp.end
                    i = here
                    continue
                record, record_end = [], grp.end
            if txn.removing and txn.rule_removed(entry.id, entry.tags):
                record = None  # left out here, not for every transaction
                continue
            if entry.gate and replay_end < 0:  # a replayed rule's first link matched: no need
                if gate < 0:
                    gate = phase_hits(txn, self.ruleset, phase)
                run = runs[here] if runs else None
                if run is not None and not gate & run[0] and not txn.removing:
                    i = run[1]  # nor of the gated rules after it
                    continue
                if not gate >> entry.prefilter & 1:
                    continue  # no value of any collection it reads hit its pattern
            rule_memo = entry.memo if quick else None
            if rule_memo is not None:
                # its first link found nothing in these values before: it fails as it would
                one = entry.memo_source
                if one is not None:
                    if (numbers.get(one) or txn.number(one)) in rule_memo and not (
                        txn.removed_targets or txn.removed_targets_by_tag
                    ):
                        continue
                elif _memo_fails(txn, entry, rule_memo):
                    continue
                if entry.memo_chain and _chain_fails(txn, entry.memo_chain):
                    continue
            matched = self.step(txn, entry)
            if record is not None:
                # a rule that failed without leaving anything behind, on request data alone,
                # fails again on the same data: it need not run on a replay
                if txn.head_matched and (matched or not entry.quiet):
                    record.append(here)
                if matched and (jumps[here] >= 0 or entry.disruptive in _STOPS):
                    record = None  # the run left the group: what follows was not seen
                elif txn.removing or txn.removed_targets or txn.removed_targets_by_tag:
                    record = None
            if not matched:
                continue
            if self._after_match(txn, entry):
                return
            if jumps[here] >= 0:
                i = jumps[here]
        if record is not None and record_end >= n:
            memo[key] = tuple(record)

    def step(self, txn: Transaction, entry: Rule) -> bool:
        """Evaluate one rule; whether it matched (its skip or skipAfter applies)."""
        fast = entry.fast_tx
        if fast is not None:
            verdict = tx_verdict(txn, fast)
            if verdict is False:
                return False
            if verdict is True and entry.fast_pure and entry.disruptive not in _STOPS:
                return True  # nothing but flow control to do
            if verdict is True and entry.chained is None and not entry.capture:
                self._fast_match(txn, entry)
                return True
            return self._rule(txn, entry)
        if entry.fast_multi and not txn.removed_targets and not txn.removed_targets_by_tag:
            verdict = tx_any_verdict(txn, entry.fast_multi)
            if verdict is False:
                return False  # no target can match
            if verdict is True and entry.fast_pure and entry.disruptive not in _STOPS:
                return True
        return self._rule(txn, entry)

    def _after_match(self, txn: Transaction, entry: Rule) -> bool:
        """The disruptive action of a matched rule; True: stop the phase."""
        if entry.disruptive in ("deny", "drop") and txn.rule_engine != "detectiononly":
            txn.disruptive = self._match_record(txn, entry)
            return True
        if entry.disruptive == "allow":
            if entry.allow_scope != "phase":
                txn.allowed = True
            return True
        return False

    def _fast_match(self, txn: Transaction, rule: Rule) -> None:
        """A `TX:key "@op N"` rule known to match: its actions, without the general machinery."""
        assert rule.fast_tx is not None
        key = rule.fast_tx[0]
        if key[0] == "&":
            name, value = "TX", "1" if key[1:] in txn.tx else "0"
        else:
            name, value = f"TX:{key}", txn.tx.get(key, "")
        txn.rule_id, txn.rule_severity, txn.rule_msg = rule.id, rule.severity, rule.msg
        txn.matched_vars = [(name, value)]
        txn.matched_var, txn.matched_var_name = value, name
        txn.matched_text = value
        self._actions(txn, rule)
        if rule.msg:
            txn.rule_msg = rule.msg_template.render(txn)
            txn.matches.append(self._match_record(txn, rule))

    def _match_record(self, txn: Transaction, rule: Rule) -> Match:
        return Match(
            rule.id, rule.msg_template.render(txn), rule.severity, txn.matched_var_name, txn.matched_var, rule.tags,
            rule.phase, txn.matched_text,
        )  # fmt: skip

    def _rule(self, txn: Transaction, rule: Rule) -> bool:
        """Whether the rule (with its chain) matched; runs its actions when it did."""
        txn.matched_vars = []
        txn.rule_id, txn.rule_severity = rule.id, rule.severity
        txn.rule_msg = rule.msg
        txn.head_matched = False
        if not self._link(txn, rule, rule):
            return False
        txn.head_matched = True
        link = rule.chained
        while link is not None:
            if not self._link(txn, link, rule):
                return False
            link = link.chained
        if rule.msg:
            txn.rule_msg = rule.msg_template.render(txn)
            txn.matches.append(self._match_record(txn, rule))
        else:
            txn.rule_msg = ""
        return True

    def link_matches(self, txn: Transaction, link: Rule, head: Rule) -> bool:
        """Whether one link of a rule matches (its actions run when it does)."""
        return self._link(txn, link, head)

    def _link(self, txn: Transaction, link: Rule, head: Rule) -> bool:
        if link.is_action:
            self._actions(txn, link)
            return True
        memo = link.memo
        # the targets to read: (index, memo key, values); the key is the number of the source
        # the values come from (with the target's index when there are several), -1: no memo
        reads: list[tuple[int, int, Selected]]
        trail: Trail | None = None  # notes what a run that can be replayed writes
        selectors = link.selectors
        # every target's values first: actions that run on a match must not change what is read
        if txn.removed_targets or txn.removed_targets_by_tag:
            extra = _removed_targets(txn, head)
            reads = [
                (index, -1, sel.values_without(txn, extra) if extra else sel.values(txn))
                for index, sel in enumerate(selectors)
            ]
            memo = None
        elif memo is None:
            if len(selectors) == 1:
                reads = [(0, -1, selectors[0].values(txn))]
            else:
                reads = [(index, -1, sel.values(txn)) for index, sel in enumerate(selectors)]
        elif len(selectors) == 1:
            number = txn.numbers.get(selectors[0].source) or txn.number(selectors[0].source)
            if number in memo:
                return False  # found nothing in these very values before
            replays = link.replays
            if replays is not None:
                done = replays.get(number)
                if done is not None:
                    done.apply(txn)  # matched in these very values before: the same writes
                    return True
                trail = Trail(txn, replays, number)
            reads = [(0, number, selectors[0].values(txn))]
        else:
            # a target whose values held no match before holds none now: only the others are
            # read (nor looked at again below)
            reads = []
            width = len(selectors)
            for index, sel in enumerate(selectors):
                number = (txn.numbers.get(sel.source) or txn.number(sel.source)) * width + index
                if number not in memo:
                    reads.append((index, number, sel.values(txn)))
            if not reads:
                return False
        op, negated, expand = link.operator, link.negated, txn.expand
        ruleset = self.ruleset
        pattern = link.prefilter
        dbs = link.scan_dbs if pattern >= 0 else ()
        pipeline = link.pipeline
        plain = not link.transforms
        tcache = None if plain else ruleset.transform_cache[pipeline]
        multimatch = link.multimatch
        cache = link.op_cache
        screen = link.screen
        budget = ruleset.budget
        matched = False
        for index, key, pairs in reads:
            found = False
            if screen is not None and pairs and none_can_match(screen, pairs):
                pairs = ()  # no value of this target can match: as if each failed
            db = dbs[index] if dbs else -1
            if cache is not None and db < 0 and not multimatch:
                # the common case, in fewer steps: one value per item, a cached operator
                # (`through` and `_operator` inlined: a call per value costs more than the lookup)
                for name, raw in pairs:
                    value = raw if tcache is None else (tcache.get(raw) or through(ruleset, pipeline, raw))
                    caps = cache.get(value, _MISS)
                    if caps is _MISS:
                        caps = cache[value] = op(value, expand)
                        budget.chars += len(value)
                        budget.entries += 1
                    if (caps is not None) != negated:
                        found = True
                        self._hit(txn, link, name, value, caps, trail)
            else:
                for name, raw in pairs:
                    if multimatch:
                        candidates = _multimatch_values(link, raw, budget, ruleset.changes[pipeline])
                    else:
                        candidates = (raw if plain else through(ruleset, pipeline, raw),)
                    for value in candidates:
                        if db >= 0 and not hits(ruleset, db, value) >> pattern & 1:
                            continue  # the prefilter rules the pattern out for this value
                        caps = _operator(op, cache, value, expand, budget)
                        if (caps is not None) != negated:
                            found = True
                            self._hit(txn, link, name, value, caps, trail)
                            break
            if found:
                matched = True
            elif key >= 0 and memo is not None:
                memo[key] = True
                budget.entries += 1
        if matched and trail is not None:
            trail.keep(txn, budget)
        return matched

    def _hit(
        self, txn: Transaction, link: Rule, name: str, value: str, caps: list[str] | None, trail: Trail | None
    ) -> None:
        """A value matched: the matched variables, captures, and the link's actions."""
        txn.matched_var, txn.matched_var_name = value, name
        txn.matched_text = caps[0] if caps else value
        txn.matched_vars.append((name, value))
        if trail is not None:
            trail.act(txn, link, caps)  # the same captures and setvars, noted
            return
        if caps and link.capture:
            tx = txn.tx
            for digit, cap in enumerate(caps[:10]):
                tx[_DIGITS[digit]] = cap
        # as in ModSecurity, non-disruptive actions run for every matched variable, as it
        # matches (a chained rule may read what its head's setvar wrote)
        if link.setvar_ops or link.ctl_ops:
            self._actions(txn, link)

    def _actions(self, txn: Transaction, link: Rule) -> None:
        for setvar in link.setvar_ops:
            setvar.apply(txn)
        for ctl in link.ctl_ops:
            self._ctl(txn, ctl)
        for action in link.collection_ops:
            action.apply(txn)

    def _ctl(self, txn: Transaction, ctl: Ctl) -> None:
        name = ctl.name
        value = ctl.value.render(txn)
        if name == "ruleremovebyid":
            for lo, hi in _id_ranges(value):
                if lo == hi:
                    txn.removed_ids.add(lo)
                else:
                    txn.removed_ranges.append((lo, hi))
            txn.removing = True
        elif name == "ruleremovebytag":
            txn.removed_tags.append(value)
            txn.removing = True
        elif name in ("ruleremovetargetbyid", "ruleremovetargetbytag"):
            selector, _, target = value.partition(";")
            specs = parse_targets(target) if target else []
            if name == "ruleremovetargetbyid":
                for lo, hi in _id_ranges(selector):
                    for rid in range(lo, hi + 1) if hi - lo < 10000 else ():
                        txn.removed_targets.setdefault(rid, []).extend(specs)
            else:
                txn.removed_targets_by_tag.extend((selector, s) for s in specs)
        elif name == "ruleengine":
            txn.rule_engine = value.lower()
        elif name == "requestbodyprocessor":
            txn.body_processor = value.upper()


_NUMERIC = {"eq": operator.eq, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}


def tx_verdict(txn: Transaction, fast: tuple[str, str, int]) -> bool | None:
    """`TX:key "@op N"`: False when it cannot match, True when it does, None: ask the operator."""
    key = fast[0]
    if key[0] == "&":
        return bool(_NUMERIC[fast[1]](1 if key[1:] in txn.tx else 0, fast[2]))
    value = txn.tx.get(key)
    if value is None:
        return False
    digits = value[1:] if value[:1] == "-" else value
    if not (digits.isascii() and digits.isdigit()):
        return None  # the operator parses a leading number
    return bool(_NUMERIC[fast[1]](int(value), fast[2]))


def tx_any_verdict(txn: Transaction, fast: tuple[tuple[str, str, int], ...]) -> bool | None:
    """Several `(&)TX:key` targets, one operator: True when one matches, False when none can."""
    unsure = False
    for one in fast:
        verdict = tx_verdict(txn, one)
        if verdict is True:
            return True
        if verdict is None:
            unsure = True
    return None if unsure else False
