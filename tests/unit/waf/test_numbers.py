"""Shortcuts for values never seen before answer as the long way: scalar variables numbered by
their value alone, empty collections by one constant number, and literal operators whose
prefilter pattern says where the literal must stand (`@streq`, `@beginsWith`, `@endsWith`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf.cache import Budget, Numbers
from portcullis.features.waf.gate import scan
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.ruleset import compile_ruleset
from portcullis.features.waf.transaction import HttpRequest, Transaction


def ids(txn: Transaction) -> list[int]:
    return [m.rule_id for m in txn.matches]


def test_scalars_and_empty_collections_get_numbers_of_their_own() -> None:
    numbers = Numbers(Budget())
    empty = numbers.number([])
    assert numbers.number([]) == empty
    pairs = numbers.number([("", "GET")])
    get, post = numbers.scalar("GET"), numbers.scalar("POST")
    assert numbers.scalar("GET") == get and len({empty, pairs, get, post}) == 4
    numbers.budget.max_entries = 0
    numbers.budget.check()  # a reset: numbers are never given again
    assert numbers.scalar("GET") not in {empty, pairs, get, post}
    assert numbers.number([]) == empty  # an empty content is the same content after a reset


LITERAL_RULES = (
    'SecRule REQUEST_LINE "@streq GET /" "id:1,phase:1,pass,t:none,msg:a"\n'
    'SecRule REQUEST_METHOD "@beginsWith PO" "id:2,phase:1,pass,t:none,msg:b"\n'
    'SecRule REQUEST_FILENAME "@endsWith .php" "id:3,phase:1,pass,t:none,msg:c"\n'
    'SecRule ARGS "@streq a+b" "id:4,phase:2,pass,t:none,t:lowercase,msg:d"\n'
    'SecRule ARGS "@contains a+b" "id:5,phase:2,pass,t:none,msg:e"\n'
    'SecRule REQUEST_PROTOCOL|REQUEST_BASENAME "@endsWith .php" "id:6,phase:2,pass,t:none,msg:f"\n'
)
METHODS = st.sampled_from(["GET", "POST", "PO", "XPOST", "get"])
PATHS = st.sampled_from(["/", "/x.php", "/x.PHP", "/x.php\n", "/.php/y", "/a", ""])
VALUES = st.text(alphabet="aAb+ \n", max_size=6)


@given(st.lists(st.tuples(METHODS, PATHS, VALUES, st.sampled_from(["", "HTTP/1.1", "x.php"])), max_size=6))
@settings(max_examples=150, deadline=None)
def test_numbered_and_anchored_shortcuts_answer_as_the_long_way(
    requests: list[tuple[str, str, str, str]],
) -> None:
    fast = Waf.from_text(LITERAL_RULES)  # caches, numbers, prefilter and gates
    for method, path, value, protocol in requests:
        request = HttpRequest(method, f"{path}?q={value}", protocol, [("Host", "h")])
        slow = Waf(compile_ruleset([("<inline>", LITERAL_RULES)]))  # no prefilter, nothing cached
        assert ids(fast.evaluate(request)) == ids(slow.evaluate(request))


@given(st.text(alphabet="GET /Tg\n\x00é", max_size=8))
@settings(max_examples=300, deadline=None)
def test_an_anchored_literal_is_hit_by_every_value_its_operator_matches(value: str) -> None:
    waf = Waf.from_text(
        'SecRule REQUEST_LINE "@streq GET /" "id:1,phase:1,pass,t:none,msg:a"\n'
        'SecRule REQUEST_LINE "@beginsWith GE" "id:2,phase:1,pass,t:none,msg:b"\n'
        'SecRule REQUEST_LINE "@endsWith T /" "id:3,phase:1,pass,t:none,msg:c"\n'
    )
    rules = waf.ruleset.rules_by_id
    for rule_id in (1, 2, 3):
        rule = rules[rule_id]
        assert rule.prefilter >= 0 and rule.gate
        if rule.operator(value, str) is not None:
            found = scan(waf.ruleset.prefilters[rule.scan_dbs[0]], value)
            assert found >> rule.prefilter & 1, (rule_id, value)


def test_a_body_is_numbered_by_its_head_processor_and_text_alone() -> None:
    numbers = Numbers(Budget())
    head = numbers.number([("", "GET")])
    body = numbers.body(head, "URLENCODED", "a=1")
    assert numbers.body(head, "URLENCODED", "a=1") == body
    others = {numbers.body(head + 1, "URLENCODED", "a=1"), numbers.body(head, "JSON", "a=1")}
    others |= {numbers.body(head, "URLENCODED", "a=2"), numbers.body(head, "", "")}
    assert len(others | {body, head, numbers.number([]), numbers.scalar("a=1")}) == 8
    numbers.budget.max_entries = 0
    numbers.budget.check()
    assert numbers.body(head, "URLENCODED", "a=1") not in others | {body}  # numbers are never given again


BODY_RULES = (
    'SecRule REQUEST_BODY "@contains evil" "id:1,phase:2,pass,t:none,msg:a"\n'
    'SecRule ARGS|FILES|XML:/* "@rx ev[i]l" "id:2,phase:2,pass,t:lowercase,msg:b"\n'
    'SecRule ARGS_NAMES "@streq evil" "id:3,phase:2,pass,t:none,msg:c"\n'
)
BODIES = st.sampled_from(["", "a=evil", "a=EVIL", "evil=1", "a=1&b=evil", "<x>evil</x>", "a=1"])
TYPES = st.sampled_from(["application/x-www-form-urlencoded", "text/xml", "multipart/form-data; boundary=b"])


@given(st.lists(st.tuples(st.sampled_from(["/", "/a"]), TYPES, BODIES), max_size=6))
@settings(max_examples=150, deadline=None)
def test_bodies_and_body_made_collections_numbered_answer_as_the_long_way(
    requests: list[tuple[str, str, str]],
) -> None:
    fast = Waf.from_text(BODY_RULES)
    for path, content_type, body in requests:
        headers = [("Host", "h"), ("Content-Type", content_type), ("Content-Length", str(len(body)))]
        request = HttpRequest("POST", path, "HTTP/1.1", headers, body=body.encode())
        slow = Waf(compile_ruleset([("<inline>", BODY_RULES)]))
        assert ids(fast.evaluate(request)) == ids(slow.evaluate(request))
