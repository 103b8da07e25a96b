"""Replay the CRS 3.3.4 regression tests (go-ftw YAML) with a 403 oracle.

Each stage's request is evaluated by the WAF exactly as the filter does for a proxied request
(phase 1 on the head, the body processor, phase 2), against the real, unchanged CRS from
Debian's modsecurity-crs. `test_crs_through_proxy` sends a sample through a real portcullis
process to check that the filter and the engine's body hold give the same verdicts.

Scoring, per the README beside the tests:
- should-block: `log_contains` stages whose rule is paranoia level 1 and CRITICAL: blocked %.
- should-pass: `no_log_contains` stages: passed %. Stages for rules above the paranoia level
  that runs are also expected to pass; they are reported apart (many are attacks that a
  lower-level rule also catches, so they are not part of the goal).

Run: python3 -m pytest tests/conformance/test_crs.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from portcullis.features.waf.loader import Waf, WafSettings
from tests.conformance.crs_cases import TESTS_DIR, Case, load_cases

CRS = "/usr/share/modsecurity-crs"

pytestmark = pytest.mark.skipif(
    not TESTS_DIR.is_dir() or not __import__("os").path.isdir(CRS),
    reason="needs ../shared/data/crs-3.3.4-tests and Debian's modsecurity-crs",
)

# Goals from the issue, reached at paranoia 1; the paranoia 2 figures are floors (what this
# engine reached when the test was written) so that a regression fails.
GOALS = {
    1: {"block": 0.99, "pass": 0.85},
    2: {"block": 0.99, "pass": 0.72},
}


@dataclass
class Tally:
    block_total: int = 0
    blocked: int = 0
    pass_total: int = 0
    passed: int = 0
    above_total: int = 0
    above_passed: int = 0
    misses: list[str] = field(default_factory=list)


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:5.1f}%" if b else "    -"


def replay(paranoia: int, cases: list[Case]) -> dict[str, Tally]:
    waf = Waf.from_settings(WafSettings(crs=CRS, paranoia=paranoia))
    rules = waf.ruleset.rules_by_id
    families: dict[str, Tally] = defaultdict(Tally)
    for case in cases:
        rule = rules.get(case.rule_id)
        level = rule.paranoia if rule is not None else 1
        blocked = waf.evaluate(case.request).disruptive is not None
        t = families[case.family]
        if case.expect_block and level <= paranoia:
            if rule is not None and level == 1 and rule.severity == "CRITICAL":
                t.block_total += 1
                t.blocked += blocked
                if not blocked:
                    t.misses.append(case.title)
        elif case.expect_block:
            t.above_total += 1
            t.above_passed += not blocked
        else:
            t.pass_total += 1
            t.passed += not blocked
    return families


def table(paranoia: int, families: dict[str, Tally]) -> tuple[float, float]:
    total = Tally()
    print(f"\nCRS 3.3.4 regression tests at paranoia level {paranoia}")
    print(f"{'family':48s} {'should-block (PL1 CRITICAL)':>28s} {'should-pass':>18s} {'above PL: passed':>20s}")
    for name in sorted(families):
        t = families[name]
        total.block_total += t.block_total
        total.blocked += t.blocked
        total.pass_total += t.pass_total
        total.passed += t.passed
        total.above_total += t.above_total
        total.above_passed += t.above_passed
        print(
            f"{name:48s} {t.blocked:>9d}/{t.block_total:<5d} {_pct(t.blocked, t.block_total):>8s}"
            f"    {t.passed:>5d}/{t.pass_total:<4d} {_pct(t.passed, t.pass_total)}"
            f"    {t.above_passed:>5d}/{t.above_total:<4d} {_pct(t.above_passed, t.above_total)}"
        )
    print(
        f"{'TOTAL':48s} {total.blocked:>9d}/{total.block_total:<5d} {_pct(total.blocked, total.block_total):>8s}"
        f"    {total.passed:>5d}/{total.pass_total:<4d} {_pct(total.passed, total.pass_total)}"
        f"    {total.above_passed:>5d}/{total.above_total:<4d} {_pct(total.above_passed, total.above_total)}"
    )
    misses = [m for t in families.values() for m in t.misses]
    print("missed should-block:", " ".join(misses) or "none")
    return total.blocked / total.block_total, total.passed / total.pass_total


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return load_cases()


@pytest.mark.parametrize("paranoia", [1, 2])
def test_crs_regression(paranoia: int, cases: list[Case]) -> None:
    block, passed = table(paranoia, replay(paranoia, cases))
    assert block >= GOALS[paranoia]["block"]
    assert passed >= GOALS[paranoia]["pass"]
