"""The regex limits on the user's own rules: a time limit that counts as a match, a cap on the
characters a regex sees, and the CRS's rules left on Python's `re`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from portcullis.config.schema import WafFilter
from portcullis.features.waf.factory import settings_of
from portcullis.features.waf.loader import Waf, WafSettings
from portcullis.features.waf.operators import GuardedRx, Rx, guard_regex
from portcullis.features.waf.transaction import HttpRequest

CATASTROPHIC = r"(a|aa)+$"  # exponential backtracking on "aaaa...!"
# the same, with a backreference: the hyperscan prefilter can only approximate it, so it lets
# "aaaa...!" through to the regex (the plain one it rules out itself)
PAST_THE_PREFILTER = r"(a|aa)+(.)\2$"


def test_a_runaway_search_is_stopped_and_counts_as_a_match() -> None:
    op = GuardedRx(CATASTROPHIC, timeout=0.05, max_input=0)
    began = time.monotonic()
    assert op("a" * 5000 + "!", lambda s: s) == []
    assert time.monotonic() - began < 2.0
    assert op("aaaa", lambda s: s) is not None
    assert op("bbb", lambda s: s) is None


def test_only_the_start_of_a_long_value_is_searched() -> None:
    op = GuardedRx(r"b$", timeout=0, max_input=10)
    assert op("a" * 20 + "b", lambda s: s) is None
    assert op("a" * 9 + "b", lambda s: s) == ["b"]


def test_macro_patterns_are_guarded_too() -> None:
    op = guard_regex(Rx("x"), 0.1, 100)
    assert isinstance(op, GuardedRx)
    rules = (
        'SecRule ARGS:a "@rx ^%{tx.want}$" "id:1,phase:2,deny,msg:m"\n'
        'SecAction "id:2,phase:1,pass,setvar:tx.want=yes"'
    )
    waf = Waf.from_settings(WafSettings(rules=(rules,)))
    assert isinstance(waf.ruleset.rules_by_id[1].operator, GuardedRx)
    assert waf.evaluate(HttpRequest("GET", "/?a=yes")).disruptive is not None
    assert waf.evaluate(HttpRequest("GET", "/?a=no")).disruptive is None


def test_negated_rules_fire_on_a_runaway_search_too() -> None:
    op = GuardedRx(CATASTROPHIC, timeout=0.05, max_input=0, negated=True)
    assert op("a" * 5000 + "!", lambda s: s) is None  # `!@rx`: no match, so the rule fires


@pytest.mark.parametrize("negated", [False, True])
def test_user_rules_are_guarded_and_a_runaway_search_blocks(negated: bool) -> None:
    op = "!@rx" if negated else "@rx"
    config = WafFilter.model_validate(
        {"type": "waf", "rules": [f'SecRule ARGS:q "{op} {PAST_THE_PREFILTER}" "id:7,phase:1,deny,msg:slow"'],
         "regex_limits": {"timeout": "50ms", "max_input": "1KiB"}}
    )  # fmt: skip
    settings = settings_of(config)
    assert (settings.regex_timeout, settings.regex_max_input) == (0.05, 1024)
    waf = Waf.from_settings(settings)
    assert isinstance(waf.ruleset.rules_by_id[7].operator, GuardedRx)
    began = time.monotonic()
    assert waf.evaluate(HttpRequest("GET", "/?q=" + "a" * 900 + "!")).disruptive is not None
    assert time.monotonic() - began < 2.0
    clean = waf.evaluate(HttpRequest("GET", "/?q=zzz")).disruptive
    assert (clean is not None) == negated  # "zzz" does not match: only `!@rx` fires


def test_the_crs_keeps_plain_re(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "REQUEST-900-X.conf").write_text('SecRule ARGS "@rx crs" "id:900,phase:2,pass"\n')
    mine = tmp_path / "mine.conf"
    mine.write_text('SecRule ARGS "@rx file" "id:2,phase:2,pass"\n')
    user = 'SecRule ARGS "@rx x" "id:1,phase:2,pass"'
    settings = WafSettings(crs=str(tmp_path), rule_files=(str(mine),), rules=(user,))
    rules = Waf.from_settings(settings).ruleset.rules_by_id
    assert type(rules[900].operator) is Rx
    assert isinstance(rules[1].operator, GuardedRx) and isinstance(rules[2].operator, GuardedRx)


def test_limits_config() -> None:
    assert WafFilter.model_validate({"type": "waf"}).regex_limits.timeout == 0.1
    with pytest.raises(ValidationError):
        WafFilter.model_validate({"type": "waf", "regex_limits": {"timeout": "1h"}})
