"""Shortcuts on the path of values never seen before give what the plain way gives."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.features.waf import transforms as T
from portcullis.features.waf.gate import CollectionGate
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.transaction import HttpRequest

from .counting import counting

# characters the transformations and their tests treat apart, and a few plain ones
TRICKY = " \t\n\r\f\v\xa0\x00,;/(\\\"'^%+&#-*.0xAaZz=é\u0100"


def plain_cmd_line(v: str) -> str:
    v = v.translate(str.maketrans("", "", "\\\"'^"))
    v = re.sub(r"[ ,;\t\r\n]+", " ", v)
    v = re.sub(r" (?=[/(])", "", v)
    return T.lowercase(v)


def plain_b64(data: str) -> str:
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data.encode("latin-1")).decode("latin-1")
    except (binascii.Error, ValueError):
        return ""


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=TRICKY, max_size=24))
def test_cmd_line_and_compress_whitespace_skip_only_steps_that_change_nothing(value: str) -> None:
    assert T.cmd_line(value) == plain_cmd_line(value)
    assert T.compress_whitespace(value) == re.sub(r"[ \t\n\r\f\v\xa0]+", " ", value)


def test_lone_spaces_are_kept_and_runs_collapsed() -> None:
    assert T.cmd_line("a b  c ,d /e (f") == "a b c d/e(f"
    assert T.compress_whitespace("a b  c\td") == "a b c d"
    assert T.compress_whitespace("a b c") == "a b c"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ABab09+/=-_ %é", max_size=24))
def test_base64_decodes_as_the_standard_library(value: str) -> None:
    assert T._b64(value) == plain_b64(value)
    assert T.base64_decode(value) == plain_b64(T._B64_RUN.match(value).group(0))  # type: ignore[union-attr]


FUNCS = (*T.CHANGES, T.base64_decode, T.md5)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=TRICKY, max_size=12))
def test_change_bits_is_each_transformations_own_test(value: str) -> None:
    expected = sum(1 << i for i, fn in enumerate(FUNCS) if T.may_change((fn,))(value))
    assert T.change_bits(FUNCS)(value) == expected


def plain_may_change(fns: tuple[T.Transform, ...], value: str) -> bool:
    """Each character, sequence, end character of each transformation looked for on its own."""
    for spec in (T.CHANGES[fn] for fn in fns):
        if any(c in value for c in spec.chars) or any(q in value for q in spec.seqs):
            return True
        if value and (value[0] in spec.ends or value[-1] in spec.ends):
            return True
        if (spec.dot and value == ".") or (spec.nonascii and not value.isascii()):
            return True
    return False


# no non-ASCII letter: a whole case of letters is tested by comparing cases, which a letter
# past ASCII may change too; the sequences (and their characters) among much else
PROBED = " /(*-#0x\\aAzZ.\t\x00\xa0\x80"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list(T.CHANGES)), min_size=1, max_size=5, unique=True), st.text(PROBED, max_size=10))
def test_sequences_found_through_one_of_their_characters_are_found_as_plainly(
    fns: list[T.Transform], value: str
) -> None:
    funcs = tuple(fns)
    assert T.may_change(funcs)(value) == plain_may_change(funcs, value)
    expected = sum(1 << i for i, fn in enumerate(funcs) if plain_may_change((fn,), value))
    assert T.change_bits(funcs)(value) == expected


def test_a_sequence_is_looked_for_through_a_mark_rather_than_a_space_or_letter() -> None:
    assert T._probe(" (") == "(" and T._probe("0x") == "0" and T._probe("  ") == " "
    assert T.may_change((T.cmd_line,))("a (b") and not T.may_change((T.cmd_line,))("a b(")


def req(uri: str) -> HttpRequest:
    return HttpRequest("GET", uri, headers=[("Host", "x")])


def test_a_gate_meets_known_content_without_collecting_it_again() -> None:
    waf = Waf.from_text('SecRule ARGS "@rx evil" "id:1,phase:2,pass,t:lowercase,msg:m"')
    (gate,) = waf.ruleset.gates[2]
    assert gate.collection == "ARGS" and not gate.memo
    # what a gate collects, it keeps by the collection's number (`collect`): a collection met
    # before is not walked again
    assert [m.rule_id for m in waf.evaluate(req("/?a=EVIL")).matches] == [1]
    assert len(gate.memo) == 1 and len(gate.cache) == 1
    gate.cache.clear()  # what each value hit: a walk of the items would fill it again
    assert [m.rule_id for m in waf.evaluate(req("/?a=EVIL")).matches] == [1]  # the gate's memo
    assert len(gate.memo) == 1 and not gate.cache
    assert [m.rule_id for m in waf.evaluate(req("/?a=fine")).matches] == []
    assert len(gate.memo) == 2 and len(gate.cache) == 1


def test_a_one_target_rule_that_found_nothing_is_not_run_on_the_same_values() -> None:
    waf = Waf.from_text(
        'SecRule REQUEST_HEADERS:X-A "!@rx ^fine$" "id:1,phase:1,pass,msg:a"\n'  # no prefilter: run'
        'SecRule ARGS|REQUEST_HEADERS:X-A "@rx evil" "id:2,phase:2,pass,msg:b"'
    )
    one, two = waf.ruleset.rules_by_id[1], waf.ruleset.rules_by_id[2]
    assert one.memo_source == "headers" and two.memo_source is None  # several targets: none
    stepped = counting(waf).stepped
    fine = HttpRequest("GET", "/?a=1", headers=[("Host", "x"), ("X-A", "fine")])
    evil = HttpRequest("GET", "/?a=2", headers=[("Host", "x"), ("X-A", "evil")])
    waf.evaluate(fine)
    assert 1 in stepped
    stepped.clear()
    assert [m.rule_id for m in waf.evaluate(fine).matches] == []
    assert 1 not in stepped  # known to fail on these headers
    assert [m.rule_id for m in waf.evaluate(evil).matches] == [1, 2]



def test_a_new_value_no_step_can_change_is_not_run_through_the_steps() -> None:
    # negated operators: no prefilter, so the rules read every value themselves
    waf = Waf.from_text(
        'SecRule ARGS "!@streq abc" "id:1,phase:2,pass,t:urlDecodeUni,t:lowercase,msg:one"\n'
        'SecRule ARGS "!@streq abc" "id:2,phase:2,pass,t:urlDecodeUni,t:lowercase,multiMatch,msg:each"'
    )
    calls: list[str] = []

    def counted(fn: T.Transform) -> T.Transform:
        def step(v: str) -> str:
            calls.append(v)
            return fn(v)

        return step

    ruleset = waf.ruleset
    ruleset.pipelines[:] = [tuple(counted(fn) for fn in funcs) for funcs in ruleset.pipelines]
    multi = ruleset.rules_by_id[2]
    multi.transforms = tuple(counted(fn) for fn in multi.transforms)
    assert [m.rule_id for m in waf.evaluate(req("/?a=abc&b=abc")).matches] == []
    assert calls == []  # the tests of `RuleSet.changes` vouch for the value as it is
    # values a step changes still go through them: rule 1 sees "abc", multiMatch the value first
    assert [m.rule_id for m in waf.evaluate(req("/?a=ABC")).matches] == [2]
    assert calls
    assert [m.rule_id for m in waf.evaluate(req("/?a=ab%2543")).matches] == [2]  # ab%43 -> abC -> abc

# CRS 934100's transformations (every value is base64-decoded), next to plain readers of ARGS
OWN_DB_RULES = (
    'SecRule ARGS "@rx (?:\\beval|new\\s+Function)\\s*\\(" '
    '"id:1,phase:2,pass,t:none,t:urlDecodeUni,t:base64Decode,multiMatch,msg:b64"\n'
    'SecRule ARGS "@rx (?i)select\\s+\\w+" "id:2,phase:2,pass,t:lowercase,msg:sql"\n'
    'SecRule ARGS "@rx evil" "id:3,phase:2,pass,msg:plain"'
)
B64_VALUES = st.one_of(
    st.text(alphabet="evalnwFuctio( sSELCT+%2", max_size=16),
    st.sampled_from(["eval(1)", "new Function (", "select x"]).map(lambda v: base64.b64encode(v.encode()).decode()),
)


def _args_gate(waf: Waf) -> CollectionGate:
    return next(g for g in waf.ruleset.gates[2] if g.collection == "ARGS")


def test_a_reader_that_changes_every_value_scans_against_its_own_patterns() -> None:
    waf = Waf.from_text(OWN_DB_RULES)
    gate = _args_gate(waf)
    (reader,) = gate.always
    assert reader.db >= 0 and reader.db != gate.db
    hidden = base64.b64encode(b"eval(1)").decode()
    assert [m.rule_id for m in waf.evaluate(req(f"/?a={hidden}")).matches] == [1]
    assert "eval(1)" in waf.ruleset.scan_cache[reader.db]  # the decoded value met the small database


@settings(max_examples=300, deadline=None)
@given(st.lists(B64_VALUES, min_size=1, max_size=3))
def test_a_readers_own_database_finds_what_the_collections_finds(values: list[str]) -> None:
    fast = Waf.from_text(OWN_DB_RULES)
    slow = Waf.from_text(OWN_DB_RULES)
    gate = _args_gate(slow)
    gate.always = tuple(replace(r, db=-1) for r in gate.always)
    gate.plans.clear()
    query = "&".join(f"a{i}={quote(v)}" for i, v in enumerate(values))
    txn_fast, txn_slow = fast.evaluate(req(f"/?{query}")), slow.evaluate(req(f"/?{query}"))
    assert txn_fast.gate_hits == txn_slow.gate_hits
    assert [m.rule_id for m in txn_fast.matches] == [m.rule_id for m in txn_slow.matches]


def test_the_counting_evaluator_counts_requests_not_folding() -> None:
    # a rule set that starts with a SecAction: folding runs it while the evaluator is made
    waf = Waf.from_text(
        'SecAction "id:1,phase:1,pass,nolog,setvar:tx.a=1"\nSecRule ARGS "@rx evil" "id:2,phase:2,pass,msg:m"'
    )
    evaluator = counting(waf)
    assert evaluator.stepped == []
    assert [m.rule_id for m in waf.evaluate(req("/?a=evil")).matches] == [2]
    assert 2 in evaluator.stepped and 2 in evaluator.heads_run
