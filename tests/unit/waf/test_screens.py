"""The shortcuts for values never seen before give the answers of the long way: a screen that
clears a whole target, runs of gated rules skipped at once, parts of the request line numbered
by their own value, the cached stages of a multiMatch rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf import transforms as T
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.operators import DetectXSS, ValidateByteRange
from portcullis.features.waf.screens import none_can_match, screen_of
from portcullis.features.waf.transaction import HttpRequest, Transaction

RANGES = ["1-255", "9,10,13,32-126,128-255", "32-36,38-126", "38,44-46,48-58,61,65-90,95,97-122", "0-200"]
PIPELINES: list[tuple[T.Transform, ...]] = [
    (),
    (T.url_decode_uni,),
    (T.url_decode_uni, T.lowercase),
    (T.utf8_to_unicode, T.url_decode_uni, T.remove_nulls),
    (T.cmd_line, T.compress_whitespace),
    (T.html_entity_decode, T.uppercase),
    (T.replace_comments,),
]
TRICKY = "aZ %+&\\\"'^,;\t\r\n\x00\x01\x7f\xa0\xc9\xe9/*-#.0x<!>"


def _through(funcs: tuple[T.Transform, ...], value: str) -> str:
    for fn in funcs:
        value = fn(value)
    return value


@given(st.lists(st.text(alphabet=TRICKY, max_size=10), max_size=4))
@settings(max_examples=400, deadline=None)
def test_a_screen_clears_only_values_that_cannot_match(values: list[str]) -> None:
    for ranges in RANGES:
        op = ValidateByteRange(ranges)
        for funcs in PIPELINES:
            screen = screen_of(op, False, funcs)
            if screen is None or not none_can_match(screen, [("n", v) for v in values]):
                continue
            for value in values:
                assert op(_through(funcs, value), str) is None, (ranges, funcs, value)


# what an XSS attempt is made of, less `<` and `=`: quotes, tag and attribute words, entities
XSS_PIECES = st.sampled_from(
    ["'", '"', "`", ">", "/", "!", "?", " ", "\t", "\x00", "script", "img", "onerror", "onload", "style",
     "href", "javascript:", "alert(1)", "-->", "[if", "xml", "import", "entity", "doctype", "&lt;", "%3c", "\\x3c"]
)


@given(st.lists(XSS_PIECES, max_size=12).map("".join))
@settings(max_examples=1000, deadline=None)
def test_libinjection_finds_no_xss_without_a_tag_opening_or_an_attribute_value(value: str) -> None:
    """What DetectXSS.needs claims of libinjection itself, in all five of its contexts."""
    assert DetectXSS().needs == "<="
    assert DetectXSS()(value, str) is None
    assert DetectXSS()(value + "<script>", str) is not None  # it is looking
    assert DetectXSS()("x onerror=alert(1)", str) is not None  # and so is an attribute value


XSS_PIPELINE = (T.utf8_to_unicode, T.url_decode_uni, T.html_entity_decode, T.js_decode, T.css_decode, T.remove_nulls)


@given(st.lists(st.lists(XSS_PIECES, max_size=6).map("".join), max_size=4))
@settings(max_examples=300, deadline=None)
def test_an_xss_screen_clears_only_values_that_cannot_match(values: list[str]) -> None:
    op = DetectXSS()
    screen = screen_of(op, False, XSS_PIPELINE)
    assert screen is not None
    if none_can_match(screen, [("n", v) for v in values]):
        for value in values:
            assert op(_through(XSS_PIPELINE, value), str) is None, value
    # an encoded `<` is a character the transformations change: it is not cleared
    assert not none_can_match(screen, [("n", v + "&lt;img src=x onerror=alert(1)>") for v in values or [""]])


def test_no_screen_where_it_proves_nothing() -> None:
    op = ValidateByteRange("32-126")
    assert screen_of(op, True, ()) is None  # negated
    assert screen_of(op, False, (T.trim,)) is None  # a change at the ends
    assert screen_of(op, False, (T.base64_decode,)) is None  # a change to any value
    assert screen_of(ValidateByteRange("0-255"), False, ()) is None  # nothing to find


def req(method: str, uri: str, body: bytes = b"") -> HttpRequest:
    headers = [("Host", "example.com")]
    if body:
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    return HttpRequest(method, uri, "HTTP/1.1", headers, body)


def ids(txn: Transaction) -> list[int]:
    return [m.rule_id for m in txn.matches]


URIS = st.sampled_from(["/a", "/b%00", "/c+d", "/?q=x%00y", "/?q=%41", "/p?x=1&y=\x01", "/p?a=b&a=c"])


@given(st.lists(st.tuples(URIS, st.text(alphabet=TRICKY, max_size=8)), min_size=1, max_size=6))
@settings(max_examples=100, deadline=None)
def test_a_rule_with_a_screen_answers_as_without(requests: list[tuple[str, str]]) -> None:
    rules = (
        'SecRule REQUEST_URI|ARGS|ARGS_NAMES "@validateByteRange 1-255" '
        '"id:1,phase:2,pass,t:none,t:urlDecodeUni,msg:a"\n'
        'SecRule ARGS "@validateByteRange 32-126" "id:2,phase:2,pass,t:none,t:lowercase,msg:b"'
    )
    fast, slow = Waf.from_text(rules), Waf.from_text(rules)
    for link in slow.ruleset.rules_by_id.values():
        link.screen = None
    for plan in slow.evaluator.folded.plans.values():
        for rule in plan.rules:
            rule.screen = None
    assert any(rule.screen is not None for plan in fast.evaluator.folded.plans.values() for rule in plan.rules)
    for uri, text in requests:
        body = b"f=" + text.encode("latin-1", "replace")
        assert ids(fast.evaluate(req("POST", uri, body))) == ids(slow.evaluate(req("POST", uri, body)))


GATED = "".join(
    f'SecRule ARGS "@rx {word}" "id:{i},phase:2,pass,msg:{word}"\n'
    for i, word in enumerate(["alpha", "beta", "gamma", "delta", "epsilon"], start=1)
)


@given(st.lists(st.sampled_from(["alpha", "gamma", "epsilon", "beta delta", "zeta", "x"]), min_size=1, max_size=8))
@settings(max_examples=50, deadline=None)
def test_a_run_of_gated_rules_is_skipped_only_when_none_could_match(words: list[str]) -> None:
    fast, slow = Waf.from_text(GATED), Waf.from_text(GATED)
    plan = fast.evaluator.folded.plans[2]
    assert plan.runs and plan.runs[0] is not None and plan.runs[0][1] == len(plan.rules)
    for p in slow.evaluator.folded.plans.values():
        p.runs = []
    for n, word in enumerate(words):
        uri = f"/?v={word.replace(' ', '+')}&n={n}"
        assert ids(fast.evaluate(req("GET", uri))) == ids(slow.evaluate(req("GET", uri)))


def test_a_removed_rule_inside_a_run_stays_removed() -> None:
    waf = Waf.from_text('SecAction "id:100,phase:1,pass,nolog,ctl:ruleRemoveById=3"\n' + GATED)
    assert ids(waf.evaluate(req("GET", "/?v=gamma"))) == []
    assert ids(waf.evaluate(req("GET", "/?v=delta"))) == [4]


def test_the_method_and_path_are_numbered_apart_from_the_query_string() -> None:
    waf = Waf.from_text(
        'SecRule REQUEST_METHOD "@streq POST" "id:1,phase:1,pass,msg:m"\n'
        'SecRule REQUEST_FILENAME "@contains evil" "id:2,phase:2,pass,msg:f"\n'
        'SecRule REQUEST_METHOD|REQUEST_PROTOCOL "@rx ^(?:PUT|HTTP/1\\.0)$" "id:3,phase:2,pass,msg:p"'
    )
    for n in range(3):
        assert ids(waf.evaluate(req("GET", f"/a?x={n}"))) == []
        assert ids(waf.evaluate(req("POST", f"/a?x={n}", b"a=1"))) == [1]
        assert ids(waf.evaluate(req("GET", f"/evil?x={n}"))) == [2]
        assert ids(waf.evaluate(req("PUT", f"/a?x={n}"))) == [3]
        assert ids(waf.evaluate(HttpRequest("GET", f"/a?x={n}", "HTTP/1.0", [("Host", "h")]))) == [3]


def test_a_multimatch_rule_tries_every_stage_of_a_value_it_saw_before() -> None:
    waf = Waf.from_text('SecRule ARGS "@rx ^ab$" "id:1,phase:2,pass,t:none,t:lowercase,multiMatch,msg:m"')
    for _ in range(2):
        assert ids(waf.evaluate(req("GET", "/?a=AB"))) == [1]
        assert ids(waf.evaluate(req("GET", "/?a=ab&n=1"))) == [1]
        assert ids(waf.evaluate(req("GET", "/?a=AC"))) == []
