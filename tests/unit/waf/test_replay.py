"""A link's matches replayed from a former run (replay.py), and the TX keys a `TX:/regex/` target
selects remembered per run of added keys (variables.py), give what the long way gives: the same
matches, matched variables, and TX with the same keys in the same order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf.fold import _chain
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.operators import compile_operator
from portcullis.features.waf.transaction import HttpRequest, Transaction

# CRS 920450 (restricted headers) as it is written, with its setup
RESTRICTED = (
    "SecAction \"id:1,phase:1,pass,nolog,setvar:'tx.restricted_headers=/proxy/ /lock-token/ /if/'\"\n"
    'SecAction "id:2,phase:1,pass,nolog,setvar:tx.anomaly_score_pl1=0,setvar:tx.critical_anomaly_score=5"\n'
    'SecRule REQUEST_HEADERS_NAMES "@rx ^.*$" "id:920450,phase:2,block,capture,t:none,t:lowercase,'
    "msg:'HTTP header is restricted by policy (%{MATCHED_VAR})',"
    "logdata:'Restricted header detected: %{MATCHED_VAR}',"
    "setvar:'tx.header_name_%{tx.0}=/%{tx.0}/',chain\"\n"
    '    SecRule TX:/^header_name_/ "@within %{tx.restricted_headers}" '
    "\"setvar:'tx.anomaly_score_pl1=+%{tx.critical_anomaly_score}'\"\n"
    'SecRule TX:/^header_name_/ "@rx ." "id:3,phase:2,pass,msg:\'%{MATCHED_VAR_NAME} %{tx.0}\'"'
)

NAMES = st.sampled_from(["Host", "Proxy", "If", "Lock-Token", "X-A", "proxy", "Accept", "IF", "x-a"])


def _without_replays(waf: Waf) -> Waf:
    """The same rules, always the long way."""
    for plans in (waf.evaluator.plans, waf.evaluator.folded.plans):
        for plan in plans.values():
            for rule in plan.rules:
                for link in _chain(rule):
                    link.replays = None
    return waf


def _outcome(txn: Transaction) -> tuple[object, ...]:
    matches = [(m.rule_id, m.msg, m.var_name, m.value, m.data) for m in txn.matches]
    return matches, list(txn.tx.items()), txn.matched_vars, txn.matched_var, txn.matched_var_name


def _request(names: list[str], uri: str = "/") -> HttpRequest:
    return HttpRequest("GET", uri, "HTTP/1.1", [(name, "v") for name in names])


@given(st.lists(st.lists(NAMES, max_size=5), min_size=1, max_size=6))
@settings(max_examples=150, deadline=None)
def test_a_replayed_link_gives_what_the_long_way_gives(heads: list[list[str]]) -> None:
    fast = Waf.from_text(RESTRICTED)
    slow = _without_replays(Waf.from_text(RESTRICTED))
    for round_ in range(2):  # the second time, every head is met again
        for i, names in enumerate(heads):
            request = _request(names, f"/?n={round_}{i}")
            assert _outcome(fast.evaluate(request)) == _outcome(slow.evaluate(request))


def test_the_restricted_header_rule_replays() -> None:
    waf = Waf.from_text(RESTRICTED)
    head = next(r for r in waf.evaluator.folded.plans[2].rules if r.id == 920450)
    assert head.replays is not None and head.replay_groups == 1
    first = _outcome(waf.evaluate(_request(["Host", "Proxy"])))
    assert len(head.replays) == 1
    again = waf.evaluate(_request(["Host", "Proxy"]))
    assert _outcome(again) == first
    assert [m.rule_id for m in again.matches] == [920450, 3]
    assert again.tx["anomaly_score_pl1"] == "5"


def _replays(text: str) -> bool:
    waf = Waf.from_text(text)
    return waf.ruleset.rules_by_id[1].replays is not None


def test_only_writes_that_do_not_depend_on_tx_are_replayed() -> None:
    rule = 'SecRule ARGS "@rx (a)" "id:1,phase:2,pass,capture,setvar:%s"'
    assert _replays(rule % "tx.x=/%{tx.1}/")
    assert _replays(rule % "tx.x_%{matched_var_name}=1")
    assert not _replays(rule % "tx.x=+1")  # arithmetic on what TX holds
    assert _replays(rule % "tx.x=%{tx.1}")  # unless a capture is "+1": looked at as it runs
    assert not _replays(rule % "!tx.x")  # a removal
    assert not _replays(rule % "tx.x=%{tx.other}")  # another variable
    assert not _replays(rule % "ip.x=1")  # another store
    assert not _replays('SecRule ARGS "!@rx a" "id:1,phase:2,pass,setvar:tx.x=1"')  # negated


# CRS 901318: the user agent's hash, on every request
UA_HASH = (
    'SecRule REQUEST_HEADERS:User-Agent "@rx ^.*$" "id:1,phase:1,pass,t:none,t:sha1,t:hexEncode,'
    "setvar:'tx.ua_hash=%{MATCHED_VAR}'\"\n"
    'SecRule TX:ua_hash "@rx ^(.)" "id:2,phase:1,pass,capture,msg:\'%{tx.0}\'"'
)


def test_a_value_set_from_the_matched_variable_replays() -> None:
    waf = Waf.from_text(UA_HASH)
    link = waf.ruleset.rules_by_id[1]
    request = HttpRequest("GET", "/?a=1", "HTTP/1.1", [("User-Agent", "curl")])
    first = _outcome(waf.evaluate(request))
    assert link.replays is not None and len(link.replays) == 1
    link.operator = compile_operator("rx", "(?!)", ".")  # matches nothing: a replay does not call it
    again = waf.evaluate(HttpRequest("GET", "/?a=2", "HTTP/1.1", [("User-Agent", "curl")]))
    assert _outcome(again) == first
    assert len(again.tx["ua_hash"]) == 40


def test_a_macro_that_expands_to_arithmetic_is_not_replayed() -> None:
    # the header's "+5" adds to what rule 1 set from the query: it differs from run to run
    text = (
        'SecRule ARGS:base "@rx ^\\d+$" "id:1,phase:1,pass,setvar:tx.score=%{MATCHED_VAR}"\n'
        'SecRule REQUEST_HEADERS:X-Delta "@rx ." "id:2,phase:1,pass,setvar:tx.score=%{MATCHED_VAR}"'
    )
    fast = Waf.from_text(text)
    slow = _without_replays(Waf.from_text(text))
    for base, delta, score in (("10", "+5", "15"), ("20", "+5", "25"), ("20", "7", "7"), ("30", "7", "7")):
        request = HttpRequest("GET", f"/?base={base}", "HTTP/1.1", [("X-Delta", delta)])
        txn = fast.evaluate(request)
        assert txn.tx["score"] == score
        assert _outcome(txn) == _outcome(slow.evaluate(request))
    assert len(fast.ruleset.rules_by_id[2].replays or {}) == 1  # the plain "7" alone


def test_a_match_without_the_groups_a_setvar_reads_is_not_replayed() -> None:
    # tx.1 is left from rule 1 when rule 2's match sets tx.0 alone: it changes with the request
    text = (
        'SecRule REQUEST_URI "@rx (\\d+)" "id:1,phase:2,pass,capture"\n'
        'SecRule REQUEST_HEADERS_NAMES "@rx ^x-" "id:2,phase:2,pass,capture,setvar:tx.seen=/%{tx.1}/"'
    )
    fast = Waf.from_text(text)
    slow = _without_replays(Waf.from_text(text))
    for uri in ("/1", "/2", "/3", "/2"):
        request = _request(["x-a"], uri)
        assert _outcome(fast.evaluate(request)) == _outcome(slow.evaluate(request))
    assert fast.evaluate(_request(["x-a"], "/7")).tx["seen"] == "/7/"
    assert fast.ruleset.rules_by_id[2].replays == {}  # compiled to replay, never kept


def test_tx_regex_keys_follow_what_each_request_added() -> None:
    text = (
        'SecRule REQUEST_HEADERS_NAMES "@rx ^(.*)$" "id:1,phase:2,pass,capture,t:lowercase,'
        'setvar:tx.h_%{tx.1}=%{tx.1},setvar:tx.other_%{tx.1}=1"\n'
        'SecRule TX:/^h_/ "@rx ." "id:2,phase:2,pass,msg:\'%{MATCHED_VAR_NAME}\'"'
    )
    waf = Waf.from_text(text)
    seen = []
    for names in (["A", "B"], ["B", "A"], ["A", "B"], ["C"], ["A", "B"]):
        txn = waf.evaluate(_request(names))
        seen.append(txn.matched_vars)
        expected = [(f"TX:{k}", v) for k, v in txn.tx.items() if k.startswith("h_")]
        assert txn.matched_vars == expected
    assert seen[0] == seen[2] == seen[4] == [("TX:h_a", "a"), ("TX:h_b", "b")]
    assert seen[1] == [("TX:h_b", "b"), ("TX:h_a", "a")]
