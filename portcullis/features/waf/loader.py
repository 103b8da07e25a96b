"""Assemble the rule sources of a WAF config (CRS setup, CRS rules, user rules, exclusions)
into one compiled `Waf`, and evaluate requests against it."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from portcullis.features.waf.engine import Evaluator
from portcullis.features.waf.prefilter import build_prefilters
from portcullis.features.waf.request import HttpRequest
from portcullis.features.waf.ruleset import Guard, RuleSet, compile_ruleset
from portcullis.features.waf.transaction import Match, Transaction

_SETUP_CANDIDATES = ("crs-setup.conf.example", "crs-setup.conf")
_SYSTEM_SETUP = ("/etc/modsecurity/crs/crs-setup.conf",)


@dataclass(frozen=True)
class Exclusion:
    rule_id: int | None = None
    tag: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class WafSettings:
    crs: str | None = None
    paranoia: int = 1
    executing_paranoia: int | None = None
    inbound_threshold: int = 5
    outbound_threshold: int = 4
    rules: tuple[str, ...] = ()
    rule_files: tuple[str, ...] = ()
    exclusions: tuple[Exclusion, ...] = field(default_factory=tuple)
    regex_timeout: float = 0.1  # the limits on the `@rx` of `rules` and `rule_files`
    regex_max_input: int = 64 * 1024
    crs_settings: tuple[tuple[str, str], ...] = ()  # (tx variable, value), set before the CRS runs


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def crs_setup_path(crs: str) -> str | None:
    for name in _SETUP_CANDIDATES:
        for candidate in (os.path.join(crs, name), os.path.join(os.path.dirname(crs.rstrip("/")), name)):
            if os.path.isfile(candidate):
                return candidate
    for candidate in _SYSTEM_SETUP:
        if os.path.isfile(candidate):
            return candidate
    return None


def crs_rule_files(crs: str) -> list[str]:
    rules_dir = os.path.join(crs, "rules") if os.path.isdir(os.path.join(crs, "rules")) else crs
    return sorted(glob.glob(os.path.join(rules_dir, "*.conf")))


def settings_rules(s: WafSettings) -> str:
    """The config's own knobs, as the SecActions a CRS user would write in crs-setup.conf."""
    executing = s.executing_paranoia or s.paranoia
    return (
        'SecDefaultAction "phase:1,log,auditlog,pass"\n'
        'SecDefaultAction "phase:2,log,auditlog,pass"\n'
        'SecAction "id:9009000,phase:1,nolog,pass,t:none,'
        f"setvar:tx.paranoia_level={s.paranoia},"
        f"setvar:tx.executing_paranoia_level={executing},"
        f"setvar:tx.inbound_anomaly_score_threshold={s.inbound_threshold},"
        f"setvar:tx.outbound_anomaly_score_threshold={s.outbound_threshold},"
        'setvar:tx.crs_setup_version=334"\n'
    ) + "".join(
        # one SecAction per setting: a value may hold spaces and commas (`allowed_methods`)
        f'SecAction "id:{9009001 + index},phase:1,nolog,pass,t:none,setvar:\'tx.{name.lower()}={value}\'"\n'
        for index, (name, value) in enumerate(s.crs_settings)
    )


def exclusion_rules(exclusions: tuple[Exclusion, ...]) -> str:
    lines: list[str] = []
    for ex in exclusions:
        if ex.target:
            target = '"!' + ex.target.replace('"', '\\"') + '"'
            if ex.rule_id is not None:
                lines.append(f"SecRuleUpdateTargetById {ex.rule_id} {target}")
            if ex.tag:
                lines.append(f'SecRuleUpdateTargetByTag "{ex.tag}" {target}')
        else:
            if ex.rule_id is not None:
                lines.append(f"SecRuleRemoveById {ex.rule_id}")
            if ex.tag:
                lines.append(f'SecRuleRemoveByTag "{ex.tag}"')
    return "\n".join(lines) + "\n"


def _rules_name(index: int) -> str:
    return f"<rules[{index}]>"


def user_guard(s: WafSettings) -> Guard:
    """The regex limits for the user's own rules (the CRS keeps Python's `re`: see docs/waf.md)."""
    names = frozenset([*s.rule_files, *(_rules_name(i) for i in range(len(s.rules)))])
    return Guard(names, s.regex_timeout, s.regex_max_input)


def load_sources(s: WafSettings) -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    if s.crs:
        setup = crs_setup_path(s.crs)
        if setup:
            sources.append((setup, _read(setup)))
        sources.append(("<waf-settings>", settings_rules(s)))
        for path in crs_rule_files(s.crs):
            sources.append((path, _read(path)))
    else:
        sources.append(("<waf-settings>", settings_rules(s)))
    for path in s.rule_files:
        sources.append((path, _read(path)))
    for index, text in enumerate(s.rules):
        sources.append((_rules_name(index), text))
    if s.exclusions:
        sources.append(("<exclusions>", exclusion_rules(s.exclusions)))
    return sources


class Waf:
    """A compiled WAF: immutable, shared by every request of the routes that use it."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.evaluator = Evaluator(ruleset)
        self.request_phases = tuple(p for p in (1, 2) if ruleset.phase_used(p))
        self.response_phases = tuple(p for p in (3, 4) if ruleset.phase_used(p))

    @classmethod
    def from_settings(cls, settings: WafSettings) -> Waf:
        ruleset = compile_ruleset(load_sources(settings), user_guard(settings))
        # rules above the executing paranoia level are skipped by the CRS itself: no scanning for them
        build_prefilters(ruleset, settings.executing_paranoia or settings.paranoia)
        return cls(ruleset)

    @classmethod
    def from_text(cls, text: str) -> Waf:
        ruleset = compile_ruleset([("<inline>", text)])
        build_prefilters(ruleset)
        return cls(ruleset)

    def begin(self, request: HttpRequest) -> Transaction:
        return Transaction(request, shared=self.ruleset.shared)

    def phase(self, txn: Transaction, phase: int) -> bool:
        """Run a phase; whether the transaction is now disrupted (a deny or drop). Read it here
        rather than from `txn` after the call: a type checker keeps what it knew before."""
        self.evaluator.run_phase(txn, phase)
        if txn.loaded:
            txn.shared.stored.save(txn)  # what the rules wrote to IP, GLOBAL ... (persist.py)
        return txn.disruptive is not None

    def evaluate(self, request: HttpRequest) -> Transaction:
        """Phases 1 and 2 over a complete request (the body included)."""
        txn = Transaction(request, shared=self.ruleset.shared)
        self.phase(txn, 1)
        txn.load_body(request.body)
        self.phase(txn, 2)
        return txn


def inbound_score(txn: Transaction) -> int:
    return _number(txn.tx.get("anomaly_score") or txn.tx.get("blocking_inbound_anomaly_score"))


def outbound_score(txn: Transaction) -> int:
    return _number(txn.tx.get("outbound_anomaly_score"))


def _number(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def describe(txn: Transaction, start: int = 0, outbound: bool = False) -> str:
    """`blocked by 942100 (SQL Injection ...), score 5`: the first scoring rule names the block.
    `start`: the first match to consider; `outbound`: a response verdict, with its own score."""
    score = f"outbound score {outbound_score(txn)}" if outbound else f"score {inbound_score(txn)}"
    scoring = [
        m
        for m in txn.matches[start:]
        if m.rule_id and not (949000 <= m.rule_id < 950000 or 959000 <= m.rule_id < 960000 or m.rule_id >= 980000)
    ]
    critical = [m for m in scoring if m.severity == "CRITICAL"]
    chosen = critical or scoring
    culprit: Match | None = chosen[0] if chosen else None
    if culprit is None:
        culprit = txn.disruptive
    if culprit is None:
        return score
    return f"{culprit.rule_id} ({culprit.msg}), {score}"
