"""What keeps requests with new argument values fast must not change a verdict either: the
tail of a pattern hyperscan cannot be trusted with, memos per target, the headers numbered
apart from the request line, heads kept from their second time, bit sets of pattern ids."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf.bodies import parse_urlencoded
from portcullis.features.waf.gate import ids_of, mask, through
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.prefilter import _RISKY
from portcullis.features.waf.tail import items, tail
from portcullis.features.waf.transaction import HttpRequest, Transaction
from portcullis.features.waf.transforms import url_decode

RISKY_PATTERNS = [
    r"(?:^|=)\s*(?:\w+=(?:[^\s]*|\$.*|<.*)\s+|!\s*)*\s*(?:'|\")*[\\'\"]*(?:l[\\'\"]*s|c[\\'\"]*at)[\\'\"]*(?:\s|;|\|)",
    r"(?i)@.+=\s*\(\s*sel",
    r"a.*\s+b[xy]\s*c",
    r"x.+\s*(?=y)z?",
]
ALPHABET = "abcxyzls t=@(;|'\"\\$!<SELsel\n"


@given(st.text(alphabet=ALPHABET, max_size=30))
@settings(max_examples=400, deadline=None)
def test_a_value_that_matches_matches_the_tail(value: str) -> None:
    for pattern in RISKY_PATTERNS:
        end = tail(pattern, _RISKY)
        assert end is not None and not _RISKY.search(end)
        if re.search(pattern, value, re.S | re.A):
            assert re.search(end, value, re.S | re.A), (pattern, end, value)


def test_tails() -> None:
    assert items(r"a\x41[]a\]]+(?:b|c)*?\s{2,3}") == ["a", r"\x41", r"[]a\]]+", "(?:b|c)*?", r"\s{2,3}"]
    assert tail(r"(?i)a.*\s*b", _RISKY) == r"(?i)\s*b"  # the global flags stay
    assert tail(r"a.*\s*b|c", _RISKY) is None  # an alternation at the top
    assert tail(r"(a).*\s*\1", _RISKY) is None  # a back reference
    assert tail(r"a\p{L}.*\s*b", _RISKY) is None  # an escape it does not follow
    assert tail(r"(?:a.*\s*b)", _RISKY) is None  # one item: no shorter end


def test_pattern_ids_as_bits() -> None:
    bits = mask([0, 3, 70])
    assert ids_of(bits) == [0, 3, 70] and bits >> 70 & 1 and not bits >> 4 & 1


def req(uri: str = "/", headers: list[tuple[str, str]] | None = None) -> HttpRequest:
    return HttpRequest("GET", uri, "HTTP/1.1", [("Host", "example.com"), *(headers or [])])


def ids(txn: Transaction) -> list[int]:
    return [m.rule_id for m in txn.matches]


def test_a_target_that_held_no_match_is_read_again_when_it_changes() -> None:
    waf = Waf.from_text('SecRule REQUEST_HEADERS:X-A|ARGS "@rx evil" "id:1,phase:2,pass,msg:m"')
    assert ids(waf.evaluate(req("/?a=fine1"))) == []
    assert ids(waf.evaluate(req("/?a=fine2"))) == []  # the header's target is not read again
    assert ids(waf.evaluate(req("/?a=fine3", [("X-A", "evil")]))) == [1]
    assert ids(waf.evaluate(req("/?a=evil"))) == [1]
    assert ids(waf.evaluate(req("/?a=fine4"))) == []


def test_header_rules_see_new_headers_behind_a_known_request_line() -> None:
    rules = (
        'SecRule REQUEST_HEADERS:X-A "@rx evil" "id:1,phase:1,pass,msg:h"\n'
        'SecRule REQUEST_HEADERS:X-B "@rx bad" "id:2,phase:1,pass,msg:i"\n'
        'SecRule REQUEST_URI "@rx evil" "id:3,phase:1,pass,msg:u"'
    )
    waf = Waf.from_text(rules)
    for i in range(3):
        assert ids(waf.evaluate(req(f"/?n={i}", [("X-A", "fine")]))) == []
        assert ids(waf.evaluate(req(f"/?n={i}", [("X-A", "evil")]))) == [1]
        assert ids(waf.evaluate(req(f"/evil?n={i}", [("X-A", "fine")]))) == [3]


def test_a_head_is_kept_from_its_second_time() -> None:
    waf = Waf.from_text('SecRule ARGS "@rx evil" "id:1,phase:2,pass,msg:m"')
    heads = waf.ruleset.shared.heads
    waf.evaluate(req("/?a=1"))
    assert len(heads) == 0
    assert ids(waf.evaluate(req("/?a=evil"))) == [1]
    assert ids(waf.evaluate(req("/?a=evil"))) == [1]
    assert len(heads) == 1


def test_a_pipeline_starts_from_its_parents_output_when_at_hand() -> None:
    waf = Waf.from_text(
        'SecRule ARGS "@rx x" "id:1,phase:2,pass,t:urlDecode,msg:a"\n'
        'SecRule ARGS "@rx y" "id:2,phase:2,pass,t:urlDecode,t:lowercase,msg:b"'
    )
    ruleset = waf.ruleset
    one = ruleset.rules_by_id[1].pipeline
    two = ruleset.rules_by_id[2].pipeline
    assert ruleset.parents[two] == one
    assert through(ruleset, one, "A%41+b") == "AA b"
    ruleset.transform_cache[one]["A%41+b"] = "KNOWN"  # taken from the parent's cache
    assert through(ruleset, two, "A%41+b") == "known"
    assert through(ruleset, two, "C%43") == "cc"


def test_a_gate_transforms_a_shared_prefix_once() -> None:
    waf = Waf.from_text(
        'SecRule ARGS "@rx ab cd" "id:1,phase:2,pass,t:none,t:urlDecode,msg:a"\n'
        'SecRule ARGS "@rx ab\\x20cd" "id:2,phase:2,pass,t:none,t:urlDecode,t:lowercase,msg:b"\n'
        'SecRule ARGS "@rx qq" "id:3,phase:2,pass,t:none,t:lowercase,msg:c"'
    )
    gate = next(g for g in waf.ruleset.gates[2] if g.collection == "ARGS")
    walk = gate.plan(mask(range(len(gate.funcs))), waf.ruleset)  # every test says "may change"
    assert len(walk.steps) == 3  # urlDecode, then lowercase after it and on the value itself
    assert len(walk.reads) == 3 and walk.same == 0
    assert ids(waf.evaluate(req("/?a=AB+CD"))) == [2]
    assert ids(waf.evaluate(req("/?a=ab+cd"))) == [1, 2]
    assert ids(waf.evaluate(req("/?a=QQ"))) == [3]
    assert ids(waf.evaluate(req("/?a=abcd"))) == []



@given(st.text(alphabet="ab=&+%2Gf0", max_size=16))
@settings(max_examples=400, deadline=None)
def test_a_query_without_escapes_is_split_as_one_with_them(text: str) -> None:
    # parse_urlencoded decodes a text without `%` at once: the same as piece by piece
    expected = [
        (url_decode(name), url_decode(value))
        for name, _, value in (piece.partition("=") for piece in text.split("&") if piece)
    ]
    assert parse_urlencoded(text) == expected
