"""A quiet chained rule (fold.group) whose later link found nothing before in what it reads now
fails without being run (`Rule.memo_chain`): CRS 920170 (a GET with a body) matches the method
of every GET and fails on its Content-Length, which stays when the argument values change."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf.loader import Waf
from portcullis.features.waf.ruleset import Rule
from portcullis.features.waf.transaction import HttpRequest, Transaction

from .counting import counting

RULES = (
    # 920170 as the CRS writes it
    'SecRule REQUEST_METHOD "@rx ^(?:GET|HEAD)$" "id:10,phase:2,block,msg:\'GET or HEAD with body\','
    'chain"\n'
    '    SecRule REQUEST_HEADERS:Content-Length "!@rx ^0?$" "setvar:tx.score=+5"\n'
    # a head that acts before its chain: not quiet, run every time
    'SecRule REQUEST_METHOD "@rx ^GET$" "id:11,phase:2,pass,setvar:tx.seen=+1,chain"\n'
    '    SecRule REQUEST_HEADERS:X-Flag "@streq on" "msg:\'flagged\'"\n'
    # a chain of three whose last link reads the values that change
    'SecRule REQUEST_METHOD "@streq GET" "id:12,phase:2,pass,chain"\n'
    '    SecRule REQUEST_HEADERS:X-Flag "@streq on" "chain"\n'
    '    SecRule ARGS "@rx evil" "msg:\'evil flagged\'"\n'
    'SecRule ARGS:off "@streq 10" "id:5,phase:1,pass,nolog,'
    'ctl:ruleRemoveTargetById=10;REQUEST_HEADERS:Content-Length"\n'
    'SecRule ARGS:off "@streq 12" "id:6,phase:1,pass,nolog,ctl:ruleRemoveTargetById=12;REQUEST_HEADERS:X-Flag"\n'
    'SecRule ARGS:off "@streq all" "id:7,phase:1,pass,nolog,ctl:ruleRemoveById=10-12"'
)


def _rules(waf: Waf) -> list[Rule]:
    return [rule for plan in waf.evaluator.folded.plans.values() for rule in plan.rules]


def _without_chain_memos(waf: Waf) -> Waf:
    """The same rules, every chain run to where it stops."""
    for rule in _rules(waf):
        rule.memo_chain = ()
    return waf


def _outcome(txn: Transaction) -> tuple[object, ...]:
    matches = [(m.rule_id, m.msg, m.var_name, m.value) for m in txn.matches]
    return matches, sorted(txn.tx.items()), txn.disruptive is not None


def _request(method: str, query: str, headers: list[tuple[str, str]]) -> HttpRequest:
    return HttpRequest(method, f"/?{query}", "HTTP/1.1", headers)


HEADERS = st.lists(
    st.sampled_from([("Content-Length", "0"), ("Content-Length", "12"), ("X-Flag", "on"), ("X-Flag", "off")]),
    max_size=3,
)
QUERIES = st.sampled_from(["a=1", "a=2", "a=evil", "off=10", "off=12", "off=all", "a=evil&off=12"])


@given(st.lists(st.tuples(st.sampled_from(["GET", "HEAD", "POST"]), QUERIES, HEADERS), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_a_chain_memo_gives_what_the_long_way_gives(
    requests: list[tuple[str, str, list[tuple[str, str]]]],
) -> None:
    fast = Waf.from_text(RULES)
    slow = _without_chain_memos(Waf.from_text(RULES))
    for _ in range(2):  # the second time, every head is met again
        for method, query, headers in requests:
            request = _request(method, query, headers)
            assert _outcome(fast.evaluate(request)) == _outcome(slow.evaluate(request))


def test_a_quiet_chain_that_failed_on_the_same_headers_is_not_run() -> None:
    waf = Waf.from_text(RULES)
    evaluator = counting(waf)
    head = next(rule for rule in _rules(waf) if rule.id == 10)
    assert head.quiet and len(head.memo_chain) == 1
    headers = [("Content-Length", "0")]
    assert _outcome(waf.evaluate(_request("GET", "a=1", headers)))[0] == []
    assert evaluator.heads_run.count(10) == 1
    for n in range(2, 5):  # new argument values, the same headers: the chain fails as before
        assert _outcome(waf.evaluate(_request("GET", f"a={n}", headers)))[0] == []
    assert evaluator.heads_run.count(10) == 1
    assert [m.rule_id for m in waf.evaluate(_request("GET", "a=5", [("Content-Length", "12")])).matches] == [10]
    assert evaluator.heads_run.count(10) == 2


def test_a_head_that_acts_runs_every_time() -> None:
    waf = Waf.from_text(RULES)
    assert next(rule for rule in _rules(waf) if rule.id == 11).memo_chain == ()
    for n in range(3):
        assert waf.evaluate(_request("GET", f"a={n}", [])).tx["seen"] == "1"
