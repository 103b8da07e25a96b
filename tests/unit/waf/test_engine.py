"""Rule evaluation: variables and exclusions, counting, chains, skip/skipAfter, setvar macros,
ctl, disruptive actions, body processors, the prefilter."""

from __future__ import annotations

from portcullis.features.waf.loader import Waf
from portcullis.features.waf.transaction import HttpRequest, Transaction

FORM = ("Content-Type", "application/x-www-form-urlencoded")


def req(
    uri: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> HttpRequest:
    return HttpRequest(method, uri, "HTTP/1.1", [("Host", "example.com"), *(headers or [])], body)


def run(rules: str, request: HttpRequest) -> Transaction:
    return Waf.from_text(rules).evaluate(request)


def ids(txn: Transaction) -> list[int]:
    return [m.rule_id for m in txn.matches]


def test_args_from_query_and_body() -> None:
    rules = 'SecRule ARGS "@streq evil" "id:1,phase:2,pass,msg:hit"'
    assert ids(run(rules, req("/?a=evil"))) == [1]
    assert ids(run(rules, req("/", "POST", [FORM], b"b=evil"))) == [1]
    assert ids(run(rules, req("/?a=fine"))) == []


def test_collection_key_and_exclusion() -> None:
    rules = 'SecRule ARGS|!ARGS:safe "@streq x" "id:1,phase:2,pass,msg:hit"'
    assert ids(run(rules, req("/?safe=x"))) == []
    assert ids(run(rules, req("/?SAFE=x"))) == []  # keys compare case-insensitively
    assert ids(run(rules, req("/?other=x"))) == [1]


def test_regex_key_and_regex_exclusion() -> None:
    rules = 'SecRule REQUEST_COOKIES:/^sess/|!REQUEST_COOKIES:/_ok$/ "@streq x" "id:1,phase:1,pass,msg:hit"'
    assert ids(run(rules, req(headers=[("Cookie", "sess_a=x")]))) == [1]
    assert ids(run(rules, req(headers=[("Cookie", "sess_ok=x; other=x")]))) == []


def test_names_collections() -> None:
    rules = 'SecRule ARGS_NAMES|REQUEST_HEADERS_NAMES "@streq x-bad" "id:1,phase:2,pass,msg:hit"'
    assert ids(run(rules, req("/?x-bad=1"))) == [1]
    assert ids(run(rules, req(headers=[("x-bad", "1")]))) == [1]


def test_counting() -> None:
    rules = (
        'SecRule &ARGS "@eq 2" "id:1,phase:2,pass,msg:two"\n'
        'SecRule &TX:nothing "@eq 0" "id:2,phase:2,pass,msg:none"'
    )
    assert ids(run(rules, req("/?a=1&b=2"))) == [1, 2]
    assert ids(run(rules, req("/?a=1"))) == [2]


def test_request_line_variables() -> None:
    txn = run("", req("/dir/file.php?x=1&y=2"))
    assert txn.items("REQUEST_FILENAME") == [("", "/dir/file.php")]
    assert txn.items("REQUEST_BASENAME") == [("", "file.php")]
    assert txn.items("QUERY_STRING") == [("", "x=1&y=2")]
    assert txn.items("REQUEST_LINE") == [("", "GET /dir/file.php?x=1&y=2 HTTP/1.1")]
    assert txn.items("REQUEST_METHOD") == [("", "GET")]
    assert txn.items("REQUEST_PROTOCOL") == [("", "HTTP/1.1")]


def test_transformations_apply_before_operator() -> None:
    rules = 'SecRule ARGS "@streq <script>" "id:1,phase:2,pass,t:urlDecodeUni,t:lowercase,msg:hit"'
    assert ids(run(rules, req("/?a=%253CSCRIPT%253E"))) == [1]  # the query parse decodes once


def test_multimatch_checks_every_stage() -> None:
    rules = 'SecRule ARGS "@streq %41" "id:1,phase:2,pass,t:none,t:urlDecode,multiMatch,msg:hit"'
    assert ids(run(rules, req("/?a=%2541"))) == [1]
    plain = 'SecRule ARGS "@streq %41" "id:1,phase:2,pass,t:none,t:urlDecode,msg:hit"'
    assert ids(run(plain, req("/?a=%2541"))) == []


def test_chain_needs_every_link() -> None:
    rules = (
        'SecRule REQUEST_METHOD "@streq POST" "id:1,phase:2,pass,msg:chain,chain"\n'
        'SecRule ARGS:a "@streq 1" "setvar:tx.hit=1"'
    )
    assert ids(run(rules, req("/?a=1", "POST"))) == [1]
    assert ids(run(rules, req("/?a=1", "GET"))) == []
    assert run(rules, req("/?a=2", "POST")).tx.get("hit") is None


def test_chain_reads_head_capture_and_setvar() -> None:
    rules = (
        'SecRule ARGS:f "@rx \\.(\\w+)$" "id:1,phase:2,pass,capture,setvar:tx.ext=.%{tx.1}/,msg:ext,chain"\n'
        'SecRule TX:ext "@within .bak/ .old/"'
    )
    assert ids(run(rules, req("/?f=a.bak"))) == [1]
    assert ids(run(rules, req("/?f=a.txt"))) == []


def test_matched_vars_in_chain() -> None:
    rules = 'SecRule ARGS "@rx a" "id:1,phase:2,pass,msg:m,chain"\nSecRule MATCHED_VARS "@rx b"'
    assert ids(run(rules, req("/?x=ab"))) == [1]
    assert ids(run(rules, req("/?x=a&y=b"))) == []


def test_skip_after_and_skip() -> None:
    rules = (
        'SecRule ARGS:go "@streq 1" "id:1,phase:1,pass,skipAfter:END"\n'
        'SecAction "id:2,phase:1,pass,msg:two"\n'
        "SecMarker END\n"
        'SecAction "id:3,phase:1,pass,skip:1"\n'
        'SecAction "id:4,phase:1,pass,msg:four"\n'
        'SecAction "id:5,phase:1,pass,msg:five"\n'
    )
    assert ids(run(rules, req("/?go=1"))) == [5]
    assert ids(run(rules, req("/?go=0"))) == [2, 5]


def test_setvar_arithmetic_delete_and_macros() -> None:
    rules = (
        'SecAction "id:1,phase:1,pass,setvar:tx.score=5,setvar:tx.score=+3,setvar:tx.score=-1,setvar:tx.flag,'
        "setvar:'tx.%{request_method}_seen=%{REQUEST_HEADERS.host}',setvar:tx.gone=1,setvar:!tx.gone\"\n"
        'SecRule ARGS:a "@rx (x+)" "id:2,phase:2,pass,capture,msg:\'got %{tx.1} in %{MATCHED_VAR_NAME}\','
        "setvar:'tx.last=%{MATCHED_VAR}',setvar:tx.rule=%{rule.id}\""
    )
    txn = run(rules, req("/?a=xxx"))
    assert txn.tx["score"] == "7" and txn.tx["flag"] == "1" and "gone" not in txn.tx
    assert txn.tx["get_seen"] == "example.com"
    assert txn.tx["last"] == "xxx" and txn.tx["rule"] == "2"
    assert txn.matches[0].msg == "got xxx in ARGS:a"


def test_deny_stops_and_records() -> None:
    rules = 'SecRule ARGS "@streq bad" "id:1,phase:1,deny,msg:no"\nSecAction "id:2,phase:2,pass,msg:later"'
    txn = run(rules, req("/?a=bad"))
    assert txn.disruptive is not None and txn.disruptive.rule_id == 1 and ids(txn) == [1]


def test_block_with_pass_default_only_scores() -> None:
    rules = 'SecDefaultAction "phase:2,log,pass"\nSecRule ARGS "@streq bad" "id:1,phase:2,block,msg:no"'
    assert run(rules, req("/?a=bad")).disruptive is None


def test_allow_stops_processing() -> None:
    rules = 'SecAction "id:1,phase:1,allow"\nSecRule ARGS "@streq bad" "id:2,phase:2,deny"'
    assert run(rules, req("/?a=bad")).disruptive is None


def test_ctl_rule_removal_and_target_removal() -> None:
    base = 'SecRule ARGS "@streq bad" "id:10,phase:2,deny,tag:grp"\n'
    assert run('SecAction "id:1,phase:1,pass,ctl:ruleRemoveById=10"\n' + base, req("/?a=bad")).disruptive is None
    assert run('SecAction "id:1,phase:1,pass,ctl:ruleRemoveByTag=grp"\n' + base, req("/?a=bad")).disruptive is None
    rm_target = 'SecAction "id:1,phase:1,pass,ctl:ruleRemoveTargetById=10;ARGS:a"\n' + base
    assert run(rm_target, req("/?a=bad")).disruptive is None
    assert run(rm_target, req("/?b=bad")).disruptive is not None
    by_tag = 'SecAction "id:1,phase:1,pass,ctl:ruleRemoveTargetByTag=grp;ARGS:a"\n' + base
    assert run(by_tag, req("/?a=bad")).disruptive is None


def test_ctl_rule_engine_off_and_body_processor() -> None:
    off = 'SecAction "id:1,phase:1,pass,ctl:ruleEngine=Off"\nSecRule ARGS "@streq bad" "id:2,phase:2,deny"'
    assert run(off, req("/?a=bad")).disruptive is None
    force = (
        'SecAction "id:1,phase:1,pass,ctl:requestBodyProcessor=JSON"\n'
        'SecRule ARGS:json.a "@streq bad" "id:2,phase:2,deny"'
    )
    assert run(force, req("/", "POST", [("Content-Type", "text/plain")], b'{"a": "bad"}')).disruptive is not None


def test_json_body_flattened() -> None:
    txn = run("", req("/", "POST", [("Content-Type", "application/json")], b'{"a": {"b": [1, "x"]}, "c": null}'))
    assert txn.collections["ARGS_POST"] == [("json.a.b.array_0", "1"), ("json.a.b.array_1", "x"), ("json.c", "")]


def test_bad_json_sets_reqbody_error() -> None:
    txn = run("", req("/", "POST", [("Content-Type", "application/json")], b"{bad"))
    assert txn.items("REQBODY_ERROR") == [("", "1")]


def test_multipart_files_and_args() -> None:
    body = (
        b"--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.php\"\r\nContent-Type: text/plain\r\n\r\n"
        b"<?php ?>\r\n--XX\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\nvalue\r\n--XX--\r\n"
    )
    txn = run("", req("/", "POST", [("Content-Type", "multipart/form-data; boundary=XX")], body))
    assert txn.items("FILES") == [("f", "a.php")]
    assert txn.items("FILES_NAMES") == [("f", "f")]
    assert txn.collections["ARGS_POST"] == [("n", "value")]
    assert txn.items("MULTIPART_STRICT_ERROR") == [("", "0")]
    assert ("f", "Content-Type: text/plain") in txn.items("MULTIPART_PART_HEADERS")


def test_xml_body() -> None:
    body = b'<?xml version="1.0"?><a x="attr"><b>text</b></a>'
    txn = run("", req("/", "POST", [("Content-Type", "application/xml")], body))
    assert txn.items("XML") == [("/*", "text"), ("//@*", "attr")]
    assert txn.items("REQUEST_BODY") == []  # only with the URL-encoded processor or none


def test_prefilter_keeps_results() -> None:
    rules = "\n".join(
        f'SecRule ARGS "@rx (?i)needle{i}" "id:{i},phase:2,pass,t:none,t:lowercase,msg:n{i}"' for i in range(1, 20)
    )
    waf = Waf.from_text(rules)
    assert waf.ruleset.prefilters  # hyperscan is installed in CI
    found = [m.rule_id for m in waf.evaluate(req("/?a=xNEEDLE7x&b=needle12")).matches]
    assert found == [1, 7, 12]  # needle1 is in needle12
    assert waf.evaluate(req("/?a=clean")).matches == []


def test_prefilter_never_hides_a_match_hyperscan_misses() -> None:
    # hyperscan 5.4 misses `@.+=\s*\(` on a long subject: such patterns are not scanned in
    # hyperscan's prefilter mode but for their necessary literals (one of `@`, `=`, `(`)
    rules = "\n".join(
        [
            'SecRule ARGS "@rx @.+=\\s*\\(" "id:1,phase:2,pass,t:none,msg:risky"',
            'SecRule ARGS "@rx zzz" "id:2,phase:2,pass,t:none,msg:plain"',
        ]
    )
    waf = Waf.from_text(rules)
    assert waf.ruleset.rules_by_id[1].prefilter >= 0
    assert waf.ruleset.rules_by_id[2].prefilter >= 0
    value = "%40" + "x" * 70 + "%3D%28"
    assert [m.rule_id for m in waf.evaluate(req(f"/?a={value}")).matches] == [1]
    assert waf.evaluate(req("/?a=x%3D%28")).matches == []


def test_pm_joins_the_prefilter() -> None:
    waf = Waf.from_text('SecRule ARGS "@pm evil.com bad-word" "id:1,phase:2,pass,t:none,t:lowercase,msg:pm"')
    assert waf.ruleset.rules_by_id[1].prefilter >= 0
    assert [m.rule_id for m in waf.evaluate(req("/?a=see+EVIL.COM")).matches] == [1]
    assert waf.evaluate(req("/?a=evilXcom")).matches == []


def test_gate_scans_a_phase_once_and_keeps_results() -> None:
    rules = "\n".join(
        [
            'SecRule REQUEST_HEADERS:User-Agent "@rx sqlmap" "id:1,phase:2,pass,t:none,t:lowercase,msg:ua"',
            'SecRule ARGS|!ARGS:safe "@rx evil" "id:2,phase:2,pass,t:none,t:lowercase,msg:args"',
            'SecRule ARGS_NAMES "@rx ^.*$" "id:3,phase:2,pass,t:none,msg:any"',
        ]
    )
    waf = Waf.from_text(rules)
    by_id = waf.ruleset.rules_by_id
    assert by_id[1].gate and by_id[2].gate
    assert by_id[3].prefilter == -1  # hits every value: left out of the prefilter, the regex runs
    # the UA pattern in another header, an excluded argument: no match for either rule
    clean = req("/?safe=EVIL&x=1", headers=[("Referer", "sqlmap")])
    assert ids(waf.evaluate(clean)) == [3]
    hit = req("/?safe=1&x=EviL", headers=[("User-Agent", "SQLMap/1.0")])
    assert ids(waf.evaluate(hit)) == [1, 2, 3]
    assert ids(waf.evaluate(req("/"))) == []


def test_tx_targets_give_a_quick_verdict() -> None:
    rules = "\n".join(
        [
            'SecRule &TX:flag|TX:flag "@eq 0" "id:1,phase:1,pass,nolog,skipAfter:END"',
            'SecAction "id:2,phase:1,pass,msg:between"',
            "SecMarker END",
            'SecAction "id:3,phase:1,pass,msg:after"',
        ]
    )
    waf = Waf.from_text(rules)
    assert waf.ruleset.rules_by_id[1].fast_multi
    assert ids(waf.evaluate(req("/"))) == [3]  # &TX:flag is 0: skipped
    flagged = Waf.from_text('SecAction "id:9,phase:1,pass,nolog,setvar:tx.flag=1"\n' + rules)
    assert ids(flagged.evaluate(req("/"))) == [2, 3]


def test_skip_counts_past_markers_as_before() -> None:
    rules = "\n".join(
        [
            'SecAction "id:1,phase:2,pass,nolog,skip:2"',
            'SecAction "id:2,phase:2,pass,msg:two"',
            "SecMarker M",
            'SecAction "id:3,phase:2,pass,msg:three"',
            'SecAction "id:4,phase:2,pass,msg:four"',
        ]
    )
    assert ids(run(rules, req("/"))) == [3, 4]
