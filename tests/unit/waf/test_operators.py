"""Operators, against the behaviour the ModSecurity reference manual documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from portcullis.features.waf.operators import OperatorError, compile_operator


def _expand(text: str) -> str:
    return text.replace("%{tx.list}", "GET HEAD").replace("%{tx.n}", "5")


def run(name: str, arg: str, value: str, base: str = ".") -> list[str] | None:
    return compile_operator(name, arg, base)(value, _expand)


@pytest.mark.parametrize(
    ("name", "arg", "value", "matches"),
    [
        ("rx", "^a.c$", "abc", True),
        ("rx", "(?i)select", "SeLeCt", True),
        ("rx", "a.b", "a\nb", True),  # DOTALL, as ModSecurity compiles
        ("rx", "^x", "abc", False),
        ("rx", "%{tx.n}", "x5", True),  # macros in the pattern
        ("pm", "foo bar", "xxBARxx", True),
        ("pm", "foo bar", "baz", False),
        ("contains", "bc", "abcd", True),
        ("contains", "zz", "abcd", False),
        ("containsWord", "abc", "x abc y", True),
        ("containsWord", "abc", "xabcy", False),
        ("beginsWith", "GET", "GET /", True),
        ("beginsWith", "GET", "POST", False),
        ("endsWith", ".php", "/a.php", True),
        ("endsWith", ".php", "/a.phps", False),
        ("streq", "abc", "abc", True),
        ("streq", "abc", "abcd", False),
        ("strmatch", "needle", "haystackneedle", True),
        ("within", "%{tx.list}", "GET", True),
        ("within", "%{tx.list}", "PUT", False),
        ("eq", "5", "5", True),
        ("eq", "%{tx.n}", "4", False),
        ("ge", "5", "5", True),
        ("ge", "5", "4", False),
        ("gt", "5", "6", True),
        ("gt", "5", "5", False),
        ("le", "5", "5", True),
        ("le", "5", "6", False),
        ("lt", "5", "4", True),
        ("lt", "5", "x", True),  # not a number: 0
        ("ipMatch", "10.0.0.0/8,192.168.1.1", "10.1.2.3", True),
        ("ipMatch", "10.0.0.0/8,192.168.1.1", "192.168.1.2", False),
        ("ipMatch", "::1", "::1", True),
        ("validateByteRange", "32-126", "hello", False),
        ("validateByteRange", "32-126", "hel\x01lo", True),
        ("validateByteRange", "10,13,32-126", "a\nb", False),
        ("validateUrlEncoding", "", "a%20b", False),
        ("validateUrlEncoding", "", "a%2", True),
        ("validateUrlEncoding", "", "a%zz", True),
        ("validateUtf8Encoding", "", "caf\xc3\xa9", False),
        ("validateUtf8Encoding", "", "caf\xe9", True),
        ("detectSQLi", "", "1' OR '1'='1", True),
        ("detectSQLi", "", "hello world", False),
        ("detectXSS", "", "<script>alert(1)</script>", True),
        ("detectXSS", "", "just text", False),
        ("unconditionalMatch", "", "", True),
        ("noMatch", "", "x", False),
        ("verifyCC", r"\d{13,16}", "4111111111111111", True),
        ("verifyCC", r"\d{13,16}", "4111111111111112", False),
    ],
)
def test_operator(name: str, arg: str, value: str, matches: bool) -> None:
    assert (run(name.lower(), arg, value) is not None) is matches


def test_rx_captures() -> None:
    assert run("rx", r"(\d+)-(\d+)", "x 12-34 y") == ["12-34", "12", "34"]


def test_pm_capture_is_the_phrase() -> None:
    assert run("pm", "alpha beta", "xx BETA") == ["beta"]


def test_pm_large_set_uses_automaton() -> None:
    words = " ".join(f"w{i}" for i in range(50))
    assert run("pm", words, "aaW42zz") is not None
    assert run("pm", words, "nothing") is None


def test_pm_from_file(tmp_path: Path) -> None:
    (tmp_path / "words.data").write_text("# comment\nfoo\n\nbar baz\n")
    assert run("pmfromfile", "words.data", "xBAR BAZx", str(tmp_path)) == ["bar baz"]
    assert run("pmfromfile", "words.data", "nope", str(tmp_path)) is None


def test_a_data_file_that_cannot_be_read_is_refused_at_its_rule(tmp_path: Path) -> None:
    from portcullis.features.waf.ruleset import compile_ruleset
    from portcullis.features.waf.seclang import SecLangError

    rules = tmp_path / "site.conf"
    rules.write_text('SecRule ARGS "@pmFromFile missing.data" "id:5,phase:2,deny"\n')
    with pytest.raises(SecLangError) as info:
        compile_ruleset([(str(rules), rules.read_text())])
    assert str(info.value) == (
        f"{rules}:1: cannot read {tmp_path / 'missing.data'}: No such file or directory"
    )


def test_ip_match_from_file(tmp_path: Path) -> None:
    (tmp_path / "ips.txt").write_text("127.0.0.0/8\n")
    assert run("ipmatchfromfile", "ips.txt", "127.0.0.9", str(tmp_path)) is not None


def test_detect_sqli_captures_fingerprint() -> None:
    # libinjection's fingerprint of the folded tokens: 1 (number), & (logic operator), 1
    assert run("detectsqli", "", "1 OR 1=1") == ["1&1"]
    assert run("detectsqli", "", "1' or '1'='1") == ["s&sos"]
    assert run("detectsqli", "", "blue shoes") is None
    assert run("detectsqli", "", "") is None


@pytest.mark.parametrize(
    "value",
    ["1 union select password from users", "é' or 1=1--", "a\x00b' or 1=1--", "x'; drop table t; --",
     "17blue shoes", "<script>alert(1)</script>", "admin'--", "1) or sleep(5)#", "naïve café"],
)
def test_detect_sqli_agrees_with_the_binding(value: str) -> None:
    """The operator calls libinjection's C function directly; the Python binding is the reference."""
    import libinjection  # type: ignore[import-not-found]

    expected = libinjection.is_sql_injection(value)
    assert run("detectsqli", "", value) == ([expected["fingerprint"]] if expected["is_sqli"] else None)


def test_detect_sqli_takes_a_lone_surrogate() -> None:
    # no transformation makes one (they keep the low byte), but a value is any str: its bytes are tested
    assert run("detectsqli", "", "\ud800' or 1=1--") == ["s&1c"]


def test_bad_operator_and_arguments() -> None:
    with pytest.raises(OperatorError):
        compile_operator("nosuch", "", ".")
    with pytest.raises(OperatorError):
        compile_operator("validatebyterange", "300-400", ".")
    with pytest.raises(OperatorError):
        compile_operator("rx", "(", ".")
    with pytest.raises(OperatorError):
        compile_operator("ipmatch", "not-an-ip", ".")
