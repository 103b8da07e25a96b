"""Transformations, against the behaviour the ModSecurity reference manual documents."""

from __future__ import annotations

import pytest

from portcullis.features.waf import transforms as T


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lowercase", "HeLLo\xc4", "hello\xc4"),
        ("uppercase", "hello", "HELLO"),
        ("urlDecode", "a%20b+c%2", "a b c%2"),
        ("urlDecode", "%zz%41", "%zzA"),
        ("urlDecodeUni", "%u0041%41+x", "AA x"),
        ("urlDecodeUni", "%uff1c", "<"),  # full-width ASCII mapped
        ("htmlEntityDecode", "&lt;a&gt;&#x41;&#66&quot;&amp;&nbsp;", '<a>AB"&\xa0'),
        ("htmlEntityDecode", "&unknown;", "&unknown;"),
        ("jsDecode", r"\x41\u0042\n\103\'", "AB\nC'"),
        ("jsDecode", r"\uff1c", "<"),
        ("cssDecode", r"\3c script\3e", "<script>"),
        ("cssDecode", "a\\\nb\\x", "abx"),
        ("cmdLine", 'C:\\Win"dows\\sys^tem32 , /c  DIR', "c:windowssystem32/c dir"),
        ("cmdLine", "echo (foo)", "echo(foo)"),
        ("compressWhitespace", "a \t\r\n  b", "a b"),
        ("removeWhitespace", "a \t b\n", "ab"),
        ("removeNulls", "a\x00b", "ab"),
        ("replaceNulls", "a\x00b", "a b"),
        ("replaceComments", "sel/*x*/ect /* open", "sel ect  "),
        ("removeComments", "a/*x*/b<!--y-->c--z", "abc"),
        ("removeCommentsChar", "a/*b*/c--d#e", "abcde"),
        ("base64Decode", "SGVsbG8=", "Hello"),
        ("base64Decode", "SGVsbG8.garbage", "Hello"),
        ("base64DecodeExt", "SGV.sbG8", "Hello"),
        ("base64Encode", "Hello", "SGVsbG8="),
        ("hexDecode", "414243", "ABC"),
        ("hexEncode", "AB", "4142"),
        ("sqlHexDecode", "0x414243 x", "ABC x"),
        ("normalizePath", "/a/./b/../c//d", "/a/c/d"),
        ("normalizePath", "/../../etc/passwd", "/etc/passwd"),
        ("normalizePath", "a/b/", "a/b/"),
        ("normalizePathWin", "\\a\\..\\b", "/b"),
        ("utf8toUnicode", "\xc3\xa9x", "%u00e9x"),
        ("escapeSeqDecode", r"\x41\n\\", "A\n\\"),
        ("length", "abcd", "4"),
        ("trim", "  a b \t", "a b"),
        ("trimLeft", "  a ", "a "),
        ("trimRight", "  a ", "  a"),
        ("urlEncode", "a b&", "a+b%26"),
        ("md5", "", "\xd4\x1d\x8c\xd9\x8f\x00\xb2\x04\xe9\x80\t\x98\xec\xf8B~"),
        ("sha1", "abc", bytes.fromhex("a9993e364706816aba3e25717850c26c9cd0d89d").decode("latin-1")),
        ("parityZero7bit", "\xc1", "A"),
    ],
)
def test_transformation(name: str, value: str, expected: str) -> None:
    assert T.lookup(name)(value) == expected


def test_unknown_transformation() -> None:
    with pytest.raises(KeyError):
        T.lookup("nosuch")


def test_transformations_are_case_insensitive_names() -> None:
    assert T.lookup("URLDECODEUNI") is T.lookup("urlDecodeUni")
