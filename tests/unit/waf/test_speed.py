"""What makes the engine fast must not change a verdict: necessary literals, the may-change tests
of transformations, rules decided at compile time (fold.py), the caches shared by transactions
(memos, group replays, parsed heads), TX:/regex/ selection."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf import transforms as T
from portcullis.features.waf.cache import Budget
from portcullis.features.waf.literals import necessary_literals
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.transaction import HttpRequest, Transaction

PATTERNS = [
    r"@.+=\s*\(",
    r"(?i)sel(?:ect|ekt)\s+from",
    r"a(?:b|c)d",
    r"x{2,3}y",
    r"(?:abc)?def",
    r"[ab]c",
    r"foo|bar",
    r"^(?:GET|HEAD)$",
    r"\bunion\b.{0,20}select",
    r"(?:^|=)\s*\{",
    r"(?i:<script[^>]*>)",
    r"(?:\.\./|%2e%2e)",
    r"on(?:load|error)\s*=",
]
ALPHABET = "abcdefxyz GETHADSLCTUNIOFRM=@({<>/.%2e\\'\"\t\n;|&#-*0"


@given(st.text(alphabet=ALPHABET, max_size=40))
@settings(max_examples=300, deadline=None)
def test_a_value_that_matches_contains_a_necessary_literal(value: str) -> None:
    for pattern in PATTERNS:
        literals = necessary_literals(pattern)
        if literals is not None and re.search(pattern, value, re.S | re.A):
            assert any(lit in value.lower() for lit in literals), (pattern, value, literals)


def test_necessary_literals() -> None:
    assert necessary_literals("foo|bar") == {"foo", "bar"}
    assert necessary_literals("https?://") == {"http://", "https://"}
    assert necessary_literals("ab(?:c|cd)") == {"abc"}  # "abcd" contains "abc"
    assert necessary_literals("^.*$") is None
    assert necessary_literals("(?i)SELECT") == {"select"}
    assert necessary_literals("a*") is None
    assert necessary_literals("(") is None  # does not parse: no claim


TRICKY = "aZ %+&\\\"'^,;\t\r\n\x00\xa0/*-#.0x\xe9<!>"


@given(st.text(alphabet=TRICKY, max_size=12))
@settings(max_examples=500, deadline=None)
def test_a_transformation_said_to_leave_a_value_does(value: str) -> None:
    for fn in T.CHANGES:
        if not T.may_change((fn,))(value):
            assert fn(value) == value, (fn.__name__, value)
    pipeline = (T.url_decode_uni, T.html_entity_decode, T.lowercase, T.cmd_line, T.compress_whitespace)
    if not T.may_change(pipeline)(value):
        out = value
        for fn in pipeline:
            out = fn(out)
        assert out == value


def req(uri: str = "/", headers: list[tuple[str, str]] | None = None, remote: str = "10.0.0.1") -> HttpRequest:
    return HttpRequest("GET", uri, "HTTP/1.1", [("Host", "example.com"), *(headers or [])], remote_addr=remote)


def ids(txn: Transaction) -> list[int]:
    return [m.rule_id for m in txn.matches]


LEVELS = """
SecAction "id:1,phase:1,pass,nolog,setvar:tx.level=1"
SecRule TX:LEVEL "@lt 2" "id:2,phase:1,pass,nolog,skipAfter:END"
SecRule ARGS "@rx a" "id:3,phase:1,pass,msg:two"
SecMarker END
SecRule ARGS "@rx b" "id:4,phase:1,pass,msg:one"
"""


def test_constant_checks_are_decided_when_compiling() -> None:
    waf = Waf.from_text(LEVELS)
    assert [r.id for r in waf.evaluator.folded.plans[1].rules] == [4]
    assert ids(waf.evaluate(req("/?x=ab"))) == [4]


def test_a_rule_that_may_write_the_variable_keeps_the_check() -> None:
    rules = LEVELS.replace("SecRule TX:LEVEL", 'SecRule ARGS:up "@streq 1" "id:5,phase:1,pass,setvar:tx.level=5"\n'
                           "SecRule TX:LEVEL", 1)
    waf = Waf.from_text(rules)
    assert 2 in [r.id for r in waf.evaluator.folded.plans[1].rules]
    assert ids(waf.evaluate(req("/?x=ab"))) == [4]
    assert ids(waf.evaluate(req("/?x=ab&up=1"))) == [3, 4]


def test_a_chain_whose_later_link_fails_on_constants_is_dropped() -> None:
    """The first link reads the request and does nothing itself; the second reads a setting
    that is 0: the rule can never match (CRS 949100 with `do_reput_block` left at 0)."""
    rules = (
        'SecAction "id:1,phase:1,pass,nolog,setvar:tx.flag=0"\n'
        'SecRule ARGS "@rx a" "id:2,phase:1,deny,msg:flagged,chain"\n'
        '    SecRule TX:FLAG "@eq 1" "t:none"\n'
        'SecRule ARGS "@rx a" "id:3,phase:1,pass,msg:seen,setvar:tx.seen=1,chain"\n'
        '    SecRule TX:FLAG "@eq 1" "t:none"\n'
    )
    waf = Waf.from_text(rules)
    kept = [r.id for r in waf.evaluator.folded.plans[1].rules]
    assert 2 not in kept and 3 in kept  # 3's first link acts before the second fails
    assert ids(waf.evaluate(req("/?x=a"))) == []
    on = Waf.from_text(rules.replace("tx.flag=0", "tx.flag=1"))
    assert 2 in [r.id for r in on.evaluator.folded.plans[1].rules]
    txn = on.evaluate(req("/?x=a"))
    assert txn.disruptive is not None and txn.disruptive.rule_id == 2


def test_a_rule_a_ctl_may_remove_is_not_decided() -> None:
    rules = LEVELS.replace(
        'SecRule TX:LEVEL', 'SecRule ARGS:off "@streq 1" "id:6,phase:1,pass,ctl:ruleRemoveById=2"\nSecRule TX:LEVEL', 1
    )
    waf = Waf.from_text(rules)
    assert 2 in [r.id for r in waf.evaluator.folded.plans[1].rules]
    assert ids(waf.evaluate(req("/?x=ab&off=1"))) == [3, 4]


def test_a_transaction_that_did_not_start_fresh_runs_the_plain_plans() -> None:
    waf = Waf.from_text(LEVELS)
    txn = waf.begin(req("/?x=ab"))
    txn.tx["level"] = "9"  # set from outside: the folded state does not hold
    waf.phase(txn, 1)
    assert txn.folded is False
    assert ids(txn) == [4]  # the SecAction set level=1 again, as it would


def test_operator_macros_of_constants_are_filled_in() -> None:
    rules = (
        'SecAction "id:1,phase:1,pass,nolog,setvar:tx.allowed=GET HEAD"\n'
        'SecRule REQUEST_METHOD "!@within %{tx.allowed}" "id:2,phase:2,deny,msg:method"'
    )
    waf = Waf.from_text(rules)
    (rule,) = waf.evaluator.folded.plans[2].rules
    assert rule.operator.pure and rule.memo is not None
    assert ids(waf.evaluate(req())) == []
    put = HttpRequest("PUT", "/", "HTTP/1.1", [("Host", "example.com")])
    assert ids(waf.evaluate(put)) == [2]


GROUP = "\n".join(
    f'SecRule REQUEST_HEADERS:X-{i} "@rx evil{i}" "id:{10 + i},phase:2,pass,t:none,msg:x{i}"' for i in range(5)
)


def test_repeated_requests_give_the_same_verdicts() -> None:
    waf = Waf.from_text(GROUP)
    assert waf.evaluator.folded.plans[2].groups[0] is not None
    clean = req(headers=[("X-1", "fine")])
    hit = req(headers=[("X-1", "fine"), ("X-3", "so evil3")])
    for _ in range(3):  # the first run records, the next ones replay
        assert ids(waf.evaluate(clean)) == []
        assert ids(waf.evaluate(hit)) == [13]


def test_a_quiet_chain_is_replayed_on_what_its_chain_reads_too() -> None:
    # the first link reads the head, the chain the client address: the same head from another
    # client must run the chain again
    rules = (
        'SecRule REQUEST_METHOD "@streq GET" "id:1,phase:2,pass,t:none,msg:local,chain"\n'
        '  SecRule REMOTE_ADDR "@ipMatch 127.0.0.1" "t:none"\n'
        'SecRule REQUEST_HEADERS:X-A "@rx never" "id:2,phase:2,pass,msg:a"'
    )
    waf = Waf.from_text(rules)
    assert ids(waf.evaluate(req(remote="10.0.0.1"))) == []
    assert ids(waf.evaluate(req(remote="127.0.0.1"))) == [1]
    assert ids(waf.evaluate(req(remote="10.0.0.1"))) == []


def test_a_ctl_in_the_middle_of_a_group_stops_the_replay() -> None:
    rules = (
        'SecRule REQUEST_HEADERS:X-Off "@streq 1" "id:1,phase:2,pass,nolog,ctl:ruleRemoveTargetById=3;ARGS:a"\n'
        'SecRule REQUEST_HEADERS:X-B "@rx never" "id:2,phase:2,pass,msg:b"\n'
        'SecRule &ARGS:a "@eq 0" "id:3,phase:2,pass,msg:no a"'
    )
    waf = Waf.from_text(rules)
    for _ in range(2):
        assert ids(waf.evaluate(req("/?a=1"))) == []
        assert ids(waf.evaluate(req("/?a=1", headers=[("X-Off", "1")]))) == [3]


def test_a_full_budget_starts_the_caches_over() -> None:
    waf = Waf.from_text(GROUP)
    budget = waf.ruleset.budget
    budget.max_entries = 5
    for i in range(20):
        assert ids(waf.evaluate(req(headers=[("X-2", f"evil2 {i}")]))) == [12]
    assert budget.resets > 0


def test_tx_regex_targets_see_added_and_removed_variables() -> None:
    rules = (
        'SecAction "id:1,phase:1,pass,nolog,setvar:tx.h_a=1,setvar:tx.h_b=1"\n'
        'SecRule &TX:/^h_/ "@eq 2" "id:2,phase:1,pass,msg:two"\n'
        'SecAction "id:3,phase:1,pass,nolog,setvar:!tx.h_a,setvar:tx.h_c=1,setvar:tx.h_d=1"\n'
        'SecRule &TX:/^h_/ "@eq 3" "id:4,phase:1,pass,msg:three"\n'
        'SecRule TX:/^h_/ "@unconditionalMatch" "id:5,phase:1,pass,msg:any"'
    )
    waf = Waf.from_text(rules)
    txn = waf.evaluate(req())
    assert ids(txn) == [2, 4, 5]
    assert txn.matched_vars == [("TX:h_b", "1"), ("TX:h_c", "1"), ("TX:h_d", "1")]


def test_string_operators_and_empty_value_checks_are_prefiltered() -> None:
    rules = (
        'SecRule REQUEST_HEADERS:X-A "@streq exact" "id:1,phase:1,pass,msg:eq"\n'
        'SecRule REQUEST_HEADERS:X-B "@contains needle" "id:2,phase:1,pass,msg:in"\n'
        'SecRule REQUEST_HEADERS:X-C "@rx ^$" "id:3,phase:1,pass,msg:empty"'
    )
    waf = Waf.from_text(rules)
    assert all(waf.ruleset.rules_by_id[i].prefilter >= 0 for i in (1, 2, 3))
    assert ids(waf.evaluate(req(headers=[("X-A", "exact"), ("X-B", "a needle"), ("X-C", "")]))) == [1, 2, 3]
    assert ids(waf.evaluate(req(headers=[("X-A", "EXACT"), ("X-B", "NEEDLE"), ("X-C", "x")]))) == []


@pytest.mark.parametrize("chars", [1, 1000])
def test_budget_counts_characters_and_entries(chars: int) -> None:
    budget = Budget(chars=100, entries=10)
    table: dict[str, int] = budget.table({})
    for i in range(20):
        table[str(i)] = i
        budget.charge(chars)
    assert len(table) < 20 and budget.resets >= 1
