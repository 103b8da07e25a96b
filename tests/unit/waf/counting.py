"""An evaluator that notes what it runs, so that a test sees what a quick path skipped (the
evaluator is compiled: its methods cannot be wrapped, but a subclass can extend them)."""

from __future__ import annotations

from portcullis.features.waf.engine import Evaluator
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.ruleset import Rule, RuleSet
from portcullis.features.waf.transaction import Transaction


class CountingEvaluator(Evaluator):
    def __init__(self, ruleset: RuleSet) -> None:
        # before the base's init: folding steps through the rule set's request-independent start
        self.stepped: list[int] = []  # the ids of the rules stepped into, in order
        self.heads_run: list[int] = []  # the ids of the rules whose first link ran
        super().__init__(ruleset)
        self.stepped.clear()  # what folding ran at compile time is no request's
        self.heads_run.clear()

    def step(self, txn: Transaction, entry: Rule) -> bool:
        self.stepped.append(entry.id)
        return super().step(txn, entry)

    def _link(self, txn: Transaction, link: Rule, head: Rule) -> bool:
        if link is head:
            self.heads_run.append(head.id)
        return super()._link(txn, link, head)


def counting(waf: Waf) -> CountingEvaluator:
    """The WAF's evaluator replaced by a counting one, made from the same rule set."""
    evaluator = CountingEvaluator(waf.ruleset)
    waf.evaluator = evaluator
    return evaluator
