"""Evaluate a compiled rule set against one transaction, phase by phase."""

from __future__ import annotations

import operator

from portcullis.features.waf.ruleset import Rule, RuleSet, _id_ranges
from portcullis.features.waf.seclang import TargetSpec, parse_targets
from portcullis.features.waf.transaction import Match, Pairs, Transaction


def _transformed(txn: Transaction, rule: Rule, value: str) -> str:
    if not rule.transforms:
        return value
    return _through(txn, rule.pipeline, value)


def _through(txn: Transaction, pipeline: int, value: str) -> str:
    """The value through a pipeline, cached per request; shared prefixes are computed once."""
    cache = txn.transformed.get(pipeline)
    if cache is None:
        cache = txn.transformed[pipeline] = {}
    out = cache.get(value)
    if out is None:
        ruleset = txn.ruleset
        assert ruleset is not None
        parent = ruleset.parents[pipeline]
        before = value if parent < 0 or not ruleset.pipelines[parent] else _through(txn, parent, value)
        out = cache[value] = ruleset.pipelines[pipeline][-1](before)
    return out


def _multimatch_values(rule: Rule, value: str) -> list[str]:
    values = [value]
    for fn in rule.transforms:
        nxt = fn(values[-1])
        if nxt != values[-1]:
            values.append(nxt)
    return values


class Evaluator:
    """Runs the phases of a rule set; the set is shared, the transaction is per request."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        # per phase: its rules without the markers, and where each jumps when it matches (the
        # index of the first rule after its skipAfter marker, or `skip` rules on; -1: the next)
        self.plans: dict[int, tuple[list[Rule], list[int]]] = {}
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
            self.plans[phase] = (rules, jumps)

    def run_phase(self, txn: Transaction, phase: int) -> None:
        txn.ruleset = self.ruleset
        if txn.disruptive is not None or txn.allowed or txn.rule_engine == "off":
            return
        plan = self.plans.get(phase)
        if not plan or not plan[0]:
            return
        rules, jumps = plan
        removing = bool(txn.removed_ids or txn.removed_ranges or txn.removed_tags)
        pipeline_hits = txn.pipeline_hits
        i, n = 0, len(rules)
        while i < n:
            entry = rules[i]
            here = i
            i += 1
            if removing and txn.rule_removed(entry.id, entry.tags):
                continue
            if entry.fast_tx is not None:
                verdict = _tx_may_match(txn, entry.fast_tx)
                if verdict is False:
                    continue
                if verdict is True and entry.fast_pure and entry.disruptive not in ("deny", "drop", "allow"):
                    if jumps[here] >= 0:
                        i = jumps[here]
                    continue
                if verdict is True and entry.chained is None and not entry.capture:
                    self._fast_match(txn, entry)
                    entry_matched = True
                else:
                    entry_matched = self._rule(txn, entry)
                removing = bool(txn.removed_ids or txn.removed_ranges or txn.removed_tags)
                if not entry_matched:
                    continue
                if self._after_match(txn, entry):
                    return
                if jumps[here] >= 0:
                    i = jumps[here]
                continue
            if entry.fast_multi and not txn.removed_targets and not txn.removed_targets_by_tag:
                verdict = _tx_any(txn, entry.fast_multi)
                if verdict is False:
                    continue  # no target can match
                if verdict is True and entry.fast_pure and entry.disruptive not in ("deny", "drop", "allow"):
                    if jumps[here] >= 0:
                        i = jumps[here]
                    continue
            if entry.gate:
                hits = pipeline_hits.get((phase, entry.pipeline))
                if hits is None:
                    hits = self._pipeline_hits(txn, phase, entry.pipeline)
                if entry.prefilter not in hits:
                    continue  # no value of any collection it reads hit its pattern
            if (
                entry.prefilter >= 0
                and entry.target_key is not None
                and not txn.removed_targets
                and not txn.removed_targets_by_tag
            ):
                union = txn.prefilter_union.get((entry.target_key, entry.pipeline))
                if union is not None and entry.prefilter not in union:
                    continue  # the prefilter already ruled this pattern out for these values
            matched = self._rule(txn, entry)
            removing = bool(txn.removed_ids or txn.removed_ranges or txn.removed_tags)
            if not matched:
                continue
            if self._after_match(txn, entry):
                return
            if jumps[here] >= 0:
                i = jumps[here]

    def _pipeline_hits(self, txn: Transaction, phase: int, pipeline: int) -> set[int]:
        """The prefilter hits of every item of the collections the phase's gated rules read."""
        found: set[int] = set()
        db = self.ruleset.prefilters[pipeline]
        plain = not self.ruleset.pipelines[pipeline]
        cache = txn.transformed.get(pipeline)
        if cache is None:
            cache = txn.transformed[pipeline] = {}
        known = txn.scanned
        static = txn.static_items
        for collection, keys in self.ruleset.gate_collections[(phase, pipeline)]:
            pairs = static.get(collection)
            if pairs is None:
                pairs = static[collection] = txn.items(collection)
            for key, raw in pairs:
                if keys is not None and key not in keys and key.lower() not in keys:
                    continue
                if plain:
                    value = raw
                else:
                    got = cache.get(raw)
                    value = got if got is not None else _through(txn, pipeline, raw)
                hits = known.get(value)
                if hits is None:
                    hits = known[value] = scan(db, value)
                if hits:
                    found |= hits
        txn.pipeline_hits[(phase, pipeline)] = found
        return found

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
            txn.rule_msg = txn.expand(rule.msg)
            txn.matches.append(self._match_record(txn, rule))

    def _match_record(self, txn: Transaction, rule: Rule) -> Match:
        return Match(
            rule.id, txn.expand(rule.msg), rule.severity, txn.matched_var_name, txn.matched_var, rule.tags, rule.phase,
            txn.matched_text,
        )

    def _rule(self, txn: Transaction, rule: Rule) -> bool:
        """Whether the rule (with its chain) matched; runs its actions when it did."""
        txn.matched_vars = []
        link: Rule | None = rule
        txn.rule_id, txn.rule_severity = rule.id, rule.severity
        txn.rule_msg = rule.msg
        while link is not None:
            if not self._link(txn, link, rule):
                return False
            link = link.chained
        txn.rule_msg = txn.expand(rule.msg) if rule.msg else ""
        if rule.msg:
            txn.matches.append(self._match_record(txn, rule))
        return True

    def _values(self, txn: Transaction, link: Rule, head: Rule) -> Pairs:
        exclusions = link.exclusions
        extra = txn.removed_targets.get(head.id)
        if txn.removed_targets_by_tag:
            tagged = [t for tag, t in txn.removed_targets_by_tag if tag in head.tags]
            if tagged:
                extra = (extra or []) + tagged
        if extra:
            exclusions = exclusions + extra
        elif link.target_key is not None:
            cached = txn.values_cache.get(link.target_key)
            if cached is None:
                cached = txn.values_cache[link.target_key] = self._collect(txn, link, exclusions)
            return cached
        return self._collect(txn, link, exclusions)

    def _collect(self, txn: Transaction, link: Rule, exclusions: list[TargetSpec]) -> Pairs:
        out: Pairs = []
        for spec in link.targets:
            if spec.count:
                plain = TargetSpec(spec.collection, spec.key, spec.key_regex)
                out.append((spec.collection, str(len(txn.select(plain, exclusions)))))
            else:
                out.extend(txn.select(spec, exclusions))
        return out

    def _link(self, txn: Transaction, link: Rule, head: Rule) -> bool:
        if link.is_action:
            self._actions(txn, link)
            return True
        op, negated, expand = link.operator, link.negated, txn.expand
        prefilter = self.ruleset.prefilters.get(link.pipeline) if link.prefilter >= 0 and not negated else None
        values = self._values(txn, link, head)
        if (
            prefilter is not None
            and link.target_key is not None
            and head.id not in txn.removed_targets
            and link.prefilter not in self._union(txn, link, values, prefilter)
        ):
            return False  # one scan of every value per (targets, pipeline) rules most rules out
        matched = False
        for name, raw in values:
            candidates = _multimatch_values(link, raw) if link.multimatch else [_transformed(txn, link, raw)]
            for value in candidates:
                if prefilter is not None and link.prefilter not in _hits(txn, link.pipeline, value, prefilter):
                    continue
                caps = op(value, expand)
                if (caps is not None) == negated:
                    continue
                matched = True
                txn.matched_var, txn.matched_var_name = value, name
                txn.matched_text = caps[0] if caps else value
                txn.matched_vars.append((name, value))
                if link.capture and caps:
                    for index, cap in enumerate(caps[:10]):
                        txn.tx[str(index)] = cap
                # as in ModSecurity, non-disruptive actions run for every matched variable, as
                # it matches (a chained rule may read what its head's setvar wrote)
                self._actions(txn, link)
                break
        return matched

    def _union(self, txn: Transaction, link: Rule, values: Pairs, db: object) -> set[int]:
        key = (link.target_key, link.pipeline)
        found = txn.prefilter_union.get(key)
        if found is None:
            found = set()
            for _, raw in values:
                found |= _hits(txn, link.pipeline, _transformed(txn, link, raw), db)
            txn.prefilter_union[key] = found
        return found

    def _actions(self, txn: Transaction, link: Rule) -> None:
        for expr in link.setvars:
            txn.set_var(expr)
        for ctl in link.ctls:
            self._ctl(txn, ctl)

    def _ctl(self, txn: Transaction, ctl: str) -> None:
        name, _, value = ctl.partition("=")
        name = name.strip().lower()
        value = txn.expand(value.strip())
        if name == "ruleremovebyid":
            for lo, hi in _id_ranges(value):
                if lo == hi:
                    txn.removed_ids.add(lo)
                else:
                    txn.removed_ranges.append((lo, hi))
        elif name == "ruleremovebytag":
            txn.removed_tags.append(value)
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


def _tx_may_match(txn: Transaction, fast: tuple[str, str, int]) -> bool | None:
    """`TX:key "@op N"`: False when it cannot match, True when it does, None: ask the operator."""
    key = fast[0]
    if key[0] == "&":
        return bool(_NUMERIC[fast[1]](1 if key[1:] in txn.tx else 0, fast[2]))
    value = txn.tx.get(key)
    if value is None:
        return False
    try:
        number = int(value)
    except ValueError:
        return None  # the operator parses a leading number
    return bool(_NUMERIC[fast[1]](number, fast[2]))


def _tx_any(txn: Transaction, fast: tuple[tuple[str, str, int], ...]) -> bool | None:
    """Several `(&)TX:key` targets, one operator: True when one matches, False when none can."""
    unsure = False
    for one in fast:
        verdict = _tx_may_match(txn, one)
        if verdict is True:
            return True
        if verdict is None:
            unsure = True
    return None if unsure else False


def _hits(txn: Transaction, pipeline: int, value: str, db: object) -> set[int]:
    """The prefilter ids that may match a transformed value; one database serves every pipeline,
    so the hits of a value are shared by all the pipelines that produce it."""
    found = txn.scanned.get(value)
    if found is None:
        found = txn.scanned[value] = scan(db, value)
    return found


def scan(db: object, value: str) -> set[int]:
    hits: set[int] = set()
    db.scan(value.encode("latin-1", "replace"), match_event_handler=_on_match, context=hits)  # type: ignore[attr-defined]
    return hits


def _on_match(pattern_id: int, start: int, end: int, flags: int, context: set[int]) -> bool | None:
    context.add(pattern_id)
    return None
