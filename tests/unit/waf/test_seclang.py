"""The SecLang parser: directives, variables, operators, actions, and the rule-set directives."""

from __future__ import annotations

import pytest

from portcullis.features.waf.operators import Rx
from portcullis.features.waf.ruleset import Marker, Rule, compile_ruleset
from portcullis.features.waf.seclang import (
    SecLangError,
    TargetSpec,
    parse_actions,
    parse_directives,
    parse_operator,
    parse_targets,
)


def test_directives_join_continuations_and_skip_comments() -> None:
    text = '# comment\nSecRule ARGS "@rx a\\"b" \\\n    "id:1,\\\n    pass"\n\nSecMarker END\n'
    ds = parse_directives(text, "f.conf")
    assert [d.name for d in ds] == ["SecRule", "SecMarker"]
    assert ds[0].args == ["ARGS", '@rx a"b', "id:1,    pass"]
    assert ds[0].line == 2
    assert ds[1].args == ["END"]


def test_unterminated_quote_is_an_error() -> None:
    with pytest.raises(SecLangError):
        parse_directives('SecRule ARGS "@rx a')


def test_targets() -> None:
    ts = parse_targets("ARGS|!ARGS:Foo|&TX:x|REQUEST_COOKIES:/^(a|b)$/|XML:/*|ARGS:'q r'")
    assert ts == [
        TargetSpec("ARGS"),
        TargetSpec("ARGS", key="foo", negated=True),
        TargetSpec("TX", key="x", count=True),
        TargetSpec("REQUEST_COOKIES", key_regex="^(a|b)$"),
        TargetSpec("XML", key="/*"),
        TargetSpec("ARGS", key="q r"),
    ]


def test_operator_forms() -> None:
    assert parse_operator("@rx ^a") == ("rx", "^a", False)
    assert parse_operator("!@within %{tx.x}") == ("within", "%{tx.x}", True)
    assert parse_operator("^implicit rx") == ("rx", "^implicit rx", False)
    assert parse_operator("!notrx") == ("rx", "notrx", True)
    assert parse_operator("@detectSQLi") == ("detectsqli", "", False)


def test_actions_with_quotes_and_commas() -> None:
    acts = parse_actions("id:1,phase:2,msg:'a, b',t:none,t:lowercase,setvar:'tx.x=+%{tx.y}',ctl:ruleRemoveById=5")
    assert acts == [
        ("id", "1"),
        ("phase", "2"),
        ("msg", "a, b"),
        ("t", "none"),
        ("t", "lowercase"),
        ("setvar", "tx.x=+%{tx.y}"),
        ("ctl", "ruleRemoveById=5"),
    ]


def _rules(text: str) -> dict[int, Rule]:
    return compile_ruleset([("<t>", text)]).rules_by_id


def test_rule_compiles_phase_transforms_and_metadata() -> None:
    rs = compile_ruleset(
        [
            (
                "<t>",
                'SecRule ARGS "@rx x" "id:10,phase:1,block,t:none,t:lowercase,msg:m,severity:2,'
                "tag:'paranoia-level/2',capture,multiMatch\"",
            )
        ]
    )
    rule = rs.rules_by_id[10]
    assert rule.phase == 1 and rule.disruptive == "pass"  # block: the default action (none: pass)
    assert rule.severity == "CRITICAL"
    assert rule.paranoia == 2 and rule.capture and rule.multimatch and len(rule.transforms) == 1
    assert isinstance(rule.operator, Rx)
    assert rs.phase_used(1) and not rs.phase_used(3)


def test_default_action_supplies_transforms() -> None:
    rules = _rules('SecDefaultAction "phase:2,pass,t:lowercase"\nSecRule ARGS "@rx x" "id:1,phase:2"')
    assert rules[1].disruptive == "pass" and len(rules[1].transforms) == 1


def test_chain_links_share_phase_and_id() -> None:
    rules = _rules('SecRule ARGS "@rx a" "id:1,phase:1,chain"\nSecRule ARGS "@rx b" "t:none,chain"\nSecRule ARGS "b"')
    head = rules[1]
    assert head.chained is not None and head.chained.chained is not None
    assert head.chained.phase == 1 and head.chained.id == 1


def test_markers_in_every_phase() -> None:
    rs = compile_ruleset([("<t>", 'SecAction "id:1,phase:1,pass"\nSecMarker END\nSecAction "id:2,phase:2,pass"')])
    assert isinstance(rs.phases[1][1], Marker) and rs.markers[2]["END"] == 0


def test_remove_by_id_tag_msg() -> None:
    text = (
        'SecAction "id:1,pass,tag:a"\nSecAction "id:2,pass,tag:b"\nSecAction "id:3,pass,msg:\'kill me\'"\n'
        'SecAction "id:4,pass"\nSecRuleRemoveById 1\nSecRuleRemoveByTag ^b$\nSecRuleRemoveByMsg kill\n'
    )
    assert set(_rules(text)) == {4}
    assert set(_rules(text + "SecRuleRemoveById 3-10")) == set()


def test_update_target_by_id_and_tag() -> None:
    text = (
        'SecRule ARGS "@rx a" "id:1,pass,tag:t"\n'
        'SecRuleUpdateTargetById 1 "!ARGS:pw|REQUEST_HEADERS"\n'
        'SecRuleUpdateTargetByTag t "!ARGS:/^x/"\n'
    )
    rule = _rules(text)[1]
    assert TargetSpec("REQUEST_HEADERS") in rule.targets
    assert TargetSpec("ARGS", key="pw") in rule.exclusions
    assert TargetSpec("ARGS", key_regex="^x") in rule.exclusions


def test_update_action_by_id() -> None:
    text = 'SecRule ARGS "@rx a" "id:1,phase:2,pass,msg:old"\nSecRuleUpdateActionById 1 "deny,msg:new"'
    rule = _rules(text)[1]
    assert rule.disruptive == "deny" and rule.msg == "new"


def test_unknown_directives_are_ignored() -> None:
    assert _rules('SecComponentSignature "x"\nSecRuleEngine On\nSecAction "id:1,pass"') .keys() == {1}


def test_errors_are_collected_with_locations() -> None:
    with pytest.raises(SecLangError) as err:
        compile_ruleset([("f.conf", 'SecRule ARGS "@nosuch x" "id:1"\nSecRule ARGS "@rx (" "id:2"')])
    assert "f.conf:1" in str(err.value) and "f.conf:2" in str(err.value)


def test_block_takes_the_default_disruptive_action() -> None:
    rules = _rules('SecDefaultAction "phase:2,log,deny"\nSecRule ARGS "@rx x" "id:1,phase:2,block"')
    assert rules[1].disruptive == "deny"


def test_an_unknown_action_is_refused_with_its_place() -> None:
    from portcullis.features.waf.ruleset import compile_ruleset

    text = 'SecRule ARGS "@rx a" "id:1,phase:2,pass,nolog"\nSecRule ARGS "@rx b" "id:2,phase:2,dney,msg:x"\n'
    with pytest.raises(SecLangError, match=r"rules\.conf:2: unknown action 'dney' \(did you mean 'deny'\?\)"):
        compile_ruleset([("rules.conf", text)])
    # the actions ModSecurity knows but this engine does not act on are accepted
    compile_ruleset([("ok.conf", 'SecRule ARGS "@rx a" "id:3,phase:2,pass,rev:2,maturity:9,accuracy:9,setenv:x=1"')])


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            'SecRule ARGS "@rx a" "id:1,phase:2,deny,t:lowercse"',
            "unknown transformation t:lowercse (did you mean 'lowercase'?)",
        ),
        ('SecRule ARGS "@rx a" "phase:2,deny"', "a rule needs an id (id:N)"),
        ('SecAction "id:x,phase:2,pass"', "bad id 'x': a positive number"),
        ('SecRule ARGS "@rx a" "id:0,phase:2,deny"', "bad id '0': a positive number"),
    ],
)
def test_a_rule_that_modsecurity_would_refuse_is_refused(rule: str, problem: str) -> None:
    from portcullis.features.waf.ruleset import compile_ruleset

    with pytest.raises(SecLangError) as info:
        compile_ruleset([("r.conf", rule)])
    assert str(info.value).endswith(f"r.conf:1: {problem}")
    # a chain's later links carry no id
    compile_ruleset([("r.conf", 'SecRule ARGS "@rx a" "id:5,phase:2,deny,chain"\n  SecRule ARGS "@rx b" "t:none"')])


def test_an_unknown_variable_is_refused() -> None:
    from portcullis.features.waf.ruleset import compile_ruleset

    with pytest.raises(SecLangError, match=r"r\.conf:1: unknown variable 'ARG' \(did you mean 'ARGS'\?\)"):
        compile_ruleset([("r.conf", 'SecRule ARG "@rx a" "id:1,phase:2,deny"')])
    rules = 'SecRule ARGS "@rx a" "id:1,phase:2,deny"\nSecRuleUpdateTargetById 1 "!REQUEST_HEADER:x"\n'
    with pytest.raises(SecLangError, match="unknown variable 'REQUEST_HEADER'"):
        compile_ruleset([("r.conf", rules)])


def test_an_unknown_directive_and_a_duplicate_id_are_refused() -> None:
    from portcullis.features.waf.ruleset import compile_ruleset

    with pytest.raises(SecLangError, match=r"r\.conf:2: unknown directive SecRul \(did you mean SecRule\?\)"):
        compile_ruleset([("r.conf", 'SecRuleEngine On\nSecRul ARGS "@rx a" "id:1,phase:2,deny"\n')])
    twice = 'SecRule ARGS "@rx a" "id:7,phase:2,deny"\nSecAction "id:7,phase:1,pass"\n'
    with pytest.raises(SecLangError, match=r"r\.conf:2: duplicate rule id 7 \(first at r\.conf:1\)"):
        compile_ruleset([("r.conf", twice)])
    # engine settings ModSecurity knows are accepted as they are
    compile_ruleset([("ok.conf", "SecRequestBodyAccess On\nSecResponseBodyMimeType text/plain\nSecDataDir /tmp\n")])
