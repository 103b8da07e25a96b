"""SecLang transformations (`t:name`), as documented in the ModSecurity reference manual.

Values are `str` holding one code point per byte (latin-1), as ModSecurity works on bytes.
Every function is pure: `str -> str`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

Transform = Callable[[str], str]

_HEX = "0123456789abcdefABCDEF"


def _is_hex(c: str) -> bool:
    return c != "" and c in _HEX


def _numeric_escape(v: str, i: int, out: list[str]) -> int:
    """Decode `\\xHH` or a 1-3 digit octal escape at v[i] (a backslash) into `out`; the index
    after it, or 0 when there is none."""
    n = len(v)
    d = v[i + 1]
    if d == "x" and i + 3 < n and _is_hex(v[i + 2 : i + 3]) and _is_hex(v[i + 3 : i + 4]):
        out.append(chr(int(v[i + 2 : i + 4], 16)))
        return i + 4
    if d in "01234567":
        j = i + 1
        while j < n and j < i + 4 and v[j] in "01234567":
            j += 1
        out.append(chr(int(v[i + 1 : j], 8) & 0xFF))
        return j
    return 0


def lowercase(v: str) -> str:
    return v.lower() if v.isascii() else "".join(c.lower() if c < "\x80" else c for c in v)


def uppercase(v: str) -> str:
    return v.upper() if v.isascii() else "".join(c.upper() if c < "\x80" else c for c in v)


_PCT = re.compile(r"%([0-9a-fA-F]{2})")
_PCT_UNI = re.compile(r"%(?:[uU]([0-9a-fA-F]{4})|([0-9a-fA-F]{2}))")


def _pct(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 16))


def _pct_uni(m: re.Match[str]) -> str:
    wide = m.group(1)
    if wide is None:
        return chr(int(m.group(2), 16))
    code = int(wide, 16)
    return chr(code - 0xFEE0) if 0xFF01 <= code <= 0xFF5E else chr(code & 0xFF)


def url_decode(v: str) -> str:
    """%XX and `+` decoding; invalid encodings are left as they are."""
    if "+" in v:
        v = v.replace("+", " ")
    if "%" not in v:
        return v
    return _PCT.sub(_pct, v)


def url_decode_uni(v: str) -> str:
    """Like urlDecode, plus the IIS `%uXXXX` form (the low byte is kept, full-width ASCII mapped)."""
    if "+" in v:
        v = v.replace("+", " ")
    if "%" not in v:
        return v
    return _PCT_UNI.sub(_pct_uni, v)


_ENTITY = re.compile(r"&(?:#[xX]([0-9a-fA-F]+);?|#([0-9]+);?|([a-zA-Z][a-zA-Z0-9]*);)")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0"}


def _entity(m: re.Match[str]) -> str:
    hexa, dec, name = m.group(1), m.group(2), m.group(3)
    if hexa is not None:
        return chr(int(hexa[:6], 16) & 0xFF)
    if dec is not None:
        return chr(int(dec[:7]) & 0xFF)
    low = name.lower()
    if low in _NAMED:
        return _NAMED[low]
    return m.group(0)


def html_entity_decode(v: str) -> str:
    """`&#xHH;`, `&#DDD;` (semicolon optional), `&quot; &amp; &lt; &gt; &nbsp;`."""
    if "&" not in v:
        return v
    return _ENTITY.sub(_entity, v)


_JS_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def js_decode(v: str) -> str:
    """`\\uHHHH` (full-width ASCII mapped, else low byte), `\\xHH`, octal `\\OOO`, `\\n` etc."""
    if "\\" not in v:
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while i < n:
        c = v[i]
        if c == "\\" and i + 1 < n:
            d = v[i + 1]
            if d == "u" and i + 5 < n and all(_is_hex(x) for x in v[i + 2 : i + 6]):
                code = int(v[i + 2 : i + 6], 16)
                out.append(chr(code - 0xFEE0) if 0xFF01 <= code <= 0xFF5E else chr(code & 0xFF))
                i += 6
                continue
            after = _numeric_escape(v, i, out)
            if after:
                i = after
                continue
            out.append(_JS_SIMPLE.get(d, d))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def css_decode(v: str) -> str:
    """CSS 2.x escapes: `\\` + 1-6 hex digits (optional following space), `\\` + newline removed."""
    if "\\" not in v:
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while i < n:
        c = v[i]
        if c == "\\" and i + 1 < n:
            j = i + 1
            while j < n and j < i + 7 and _is_hex(v[j]):
                j += 1
            if j > i + 1:
                code = int(v[i + 1 : j], 16)
                full = 0xFF01 <= code <= 0xFF5E and j - i - 1 >= 5
                out.append(chr(code - 0xFEE0) if full else chr(code & 0xFF))
                if j < n and v[j] in " \t\n\r\f":
                    j += 1
                i = j
                continue
            if v[i + 1] == "\n":
                i += 2
                continue
            out.append(v[i + 1])
            i += 2
            continue
        if c == "\\":
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


_CMD_DELETE = "\\\"'^"
_CMD_SPACES = re.compile(r"[ ,;\t\r\n]+")
_CMD_BEFORE = re.compile(r" (?=[/(])")


def cmd_line(v: str) -> str:
    """Windows/Unix command-line normalisation: drop `\\ " ' ^`, spaces/`,`/`;` -> one space,
    drop a space before `/` or `(`, lowercase. Each step only when the value holds what it
    changes: `str.translate` and `re.sub` cost far more than a few `in` tests."""
    for char in _CMD_DELETE:
        if char in v:
            v = v.replace(char, "")
    # runs of separators become one space: with none but lone spaces, nothing changes (text has
    # a space every few characters, and `re.sub` costs per match)
    if "  " in v or "," in v or ";" in v or "\t" in v or "\r" in v or "\n" in v:
        v = _CMD_SPACES.sub(" ", v)
    if " /" in v or " (" in v:
        v = _CMD_BEFORE.sub("", v)
    return lowercase(v)


_WS = re.compile(r"[ \t\n\r\f\v\xa0]+")


def compress_whitespace(v: str) -> str:
    # as in `cmd_line`: a value whose only whitespace is lone spaces is left as it is
    if "  " in v or "\t" in v or "\n" in v or "\r" in v or "\f" in v or "\v" in v or "\xa0" in v:
        return _WS.sub(" ", v)
    return v


def remove_whitespace(v: str) -> str:
    return _WS.sub("", v)


def remove_nulls(v: str) -> str:
    return v.replace("\x00", "")


def replace_nulls(v: str) -> str:
    return v.replace("\x00", " ")


_C_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.S)


def replace_comments(v: str) -> str:
    """Each C-style comment (an unterminated one runs to the end) becomes one space."""
    if "/*" not in v:
        return v
    return _C_COMMENT.sub(" ", v)


_ANY_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)|<!--.*?(?:-->|\Z)|--.*|#.*", re.S)


def remove_comments(v: str) -> str:
    return _ANY_COMMENT.sub("", v)


def remove_comments_char(v: str) -> str:
    for token in ("/*", "*/", "<!--", "-->", "--", "#"):
        v = v.replace(token, "")
    return v


_B64_CLEAN = re.compile(r"[^A-Za-z0-9+/]")
_B64_RUN = re.compile(r"[A-Za-z0-9+/]*")


def base64_decode(v: str) -> str:
    """Decodes up to the first character that is not base64; what decodes is kept."""
    m = _B64_RUN.match(v)
    data = m.group(0) if m else ""
    return _b64(data) if data else ""


def base64_decode_ext(v: str) -> str:
    """Forgiving: characters outside the alphabet are skipped."""
    return _b64(_B64_CLEAN.sub("", v))


def _b64(data: str) -> str:
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
    data += "=" * (-len(data) % 4)
    try:
        # what `base64.b64decode` does (no validation), without its checks of the argument's type
        return binascii.a2b_base64(data.encode("latin-1")).decode("latin-1")
    except (binascii.Error, ValueError):
        return ""


def base64_encode(v: str) -> str:
    return base64.b64encode(v.encode("latin-1")).decode("ascii")


def hex_decode(v: str) -> str:
    data = v[: len(v) - len(v) % 2]
    try:
        return bytes.fromhex(data).decode("latin-1")
    except ValueError:
        return v


def hex_encode(v: str) -> str:
    return v.encode("latin-1").hex()


_SQL_HEX = re.compile(r"0x((?:[0-9a-fA-F]{2})+)")


def sql_hex_decode(v: str) -> str:
    return _SQL_HEX.sub(lambda m: bytes.fromhex(m.group(1)).decode("latin-1"), v)


def normalize_path(v: str) -> str:
    """Remove `./`, resolve `dir/../`, collapse `//`; keeps a leading/trailing slash."""
    if not v:
        return v
    absolute = v.startswith("/")
    trailing = v.endswith("/") or v.endswith("/.") or v.endswith("/..")
    parts: list[str] = []
    for seg in v.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(seg)
    out = "/".join(parts)
    if absolute:
        out = "/" + out
    if trailing and out and not out.endswith("/"):
        out += "/"
    return out


def normalize_path_win(v: str) -> str:
    return normalize_path(v.replace("\\", "/"))


def utf8_to_unicode(v: str) -> str:
    """Multi-byte UTF-8 sequences become `%uHHHH`; invalid bytes stay."""
    if v.isascii():
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while i < n:
        c = ord(v[i])
        width = 2 if 0xC0 <= c < 0xE0 else 3 if 0xE0 <= c < 0xF0 else 4 if 0xF0 <= c < 0xF8 else 0
        if width and i + width <= n:
            chunk = v[i : i + width].encode("latin-1")
            try:
                ch = chunk.decode("utf-8")
            except UnicodeDecodeError:
                ch = ""
            if ch:
                out.append("%%u%04x" % (ord(ch) & 0xFFFF if ord(ch) > 0xFFFF else ord(ch)))
                i += width
                continue
        out.append(v[i])
        i += 1
    return "".join(out)


_C_SIMPLE = {**_JS_SIMPLE, "\\": "\\", "?": "?", "'": "'", '"': '"'}


def escape_seq_decode(v: str) -> str:
    """ANSI C escapes: `\\a \\b \\f \\n \\r \\t \\v \\\\ \\? \\' \\"`, `\\xHH`, `\\OOO`."""
    if "\\" not in v:
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while i < n:
        c = v[i]
        if c == "\\" and i + 1 < n:
            d = v[i + 1]
            if d in _C_SIMPLE:
                out.append(_C_SIMPLE[d])
                i += 2
                continue
            after = _numeric_escape(v, i, out)
            if after:
                i = after
                continue
        out.append(c)
        i += 1
    return "".join(out)


def length(v: str) -> str:
    return str(len(v))


def md5(v: str) -> str:
    return hashlib.md5(v.encode("latin-1"), usedforsecurity=False).digest().decode("latin-1")


def sha1(v: str) -> str:
    return hashlib.sha1(v.encode("latin-1"), usedforsecurity=False).digest().decode("latin-1")


def trim(v: str) -> str:
    return v.strip(" \t\n\r\f\v\x00")


def trim_left(v: str) -> str:
    return v.lstrip(" \t\n\r\f\v\x00")


def trim_right(v: str) -> str:
    return v.rstrip(" \t\n\r\f\v\x00")


def url_encode(v: str) -> str:
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")
    return "".join(c if c in safe else "+" if c == " " else "%%%02x" % (ord(c) & 0xFF) for c in v)


def parity_zero_7bit(v: str) -> str:
    return "".join(chr(ord(c) & 0x7F) for c in v)


TRANSFORMS: dict[str, Transform] = {
    "lowercase": lowercase,
    "uppercase": uppercase,
    "urldecode": url_decode,
    "urldecodeuni": url_decode_uni,
    "htmlentitydecode": html_entity_decode,
    "jsdecode": js_decode,
    "cssdecode": css_decode,
    "cmdline": cmd_line,
    "compresswhitespace": compress_whitespace,
    "removewhitespace": remove_whitespace,
    "removenulls": remove_nulls,
    "replacenulls": replace_nulls,
    "replacecomments": replace_comments,
    "removecomments": remove_comments,
    "removecommentschar": remove_comments_char,
    "base64decode": base64_decode,
    "base64decodeext": base64_decode_ext,
    "base64encode": base64_encode,
    "hexdecode": hex_decode,
    "hexencode": hex_encode,
    "sqlhexdecode": sql_hex_decode,
    "normalizepath": normalize_path,
    "normalisepath": normalize_path,
    "normalizepathwin": normalize_path_win,
    "normalisepathwin": normalize_path_win,
    "utf8tounicode": utf8_to_unicode,
    "escapeseqdecode": escape_seq_decode,
    "length": length,
    "md5": md5,
    "sha1": sha1,
    "trim": trim,
    "trimleft": trim_left,
    "trimright": trim_right,
    "urlencode": url_encode,
    "paritzero7bit": parity_zero_7bit,
    "parityzero7bit": parity_zero_7bit,
}


def lookup(name: str) -> Transform:
    """The transformation called `name` (case-insensitive); KeyError if unknown."""
    return TRANSFORMS[name.lower()]


# --------------------------------------------------------------------------- may change
# What can make a transformation change a value: characters, sequences, a leading or trailing
# character, the value "." alone, any non-ASCII character. A value with none of them is left
# as it is, so the prefilter can skip pipelines that leave a (typically clean) value unchanged.


@dataclass(frozen=True)
class Change:
    chars: str = ""  # any of these characters
    seqs: tuple[str, ...] = ()  # any of these sequences
    ends: str = ""  # one of these characters first or last
    dot: bool = False  # the value "." itself
    nonascii: bool = False  # a character past 0x7f


_UPPERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TRIMMED = " \t\n\r\f\v\x00"
CHANGES: dict[Transform, Change] = {
    lowercase: Change(_UPPERS),
    uppercase: Change(_UPPERS.lower()),
    url_decode: Change("%+"),
    url_decode_uni: Change("%+"),
    html_entity_decode: Change("&"),
    js_decode: Change("\\"),
    css_decode: Change("\\"),
    escape_seq_decode: Change("\\"),
    cmd_line: Change("\\\"'^,;\t\r\n" + _UPPERS, ("  ", " /", " (")),
    compress_whitespace: Change("\t\n\r\f\v\xa0", ("  ",)),
    remove_whitespace: Change(" \t\n\r\f\v\xa0"),
    remove_nulls: Change("\x00"),
    replace_nulls: Change("\x00"),
    replace_comments: Change(seqs=("/*",)),
    remove_comments: Change("#", ("/*", "--")),
    remove_comments_char: Change("#", ("/*", "*/", "--")),
    normalize_path: Change("/", dot=True),
    normalize_path_win: Change("/\\", dot=True),
    utf8_to_unicode: Change(nonascii=True),
    parity_zero_7bit: Change(nonascii=True),
    trim: Change(ends=_TRIMMED),
    trim_left: Change(ends=_TRIMMED),
    trim_right: Change(ends=_TRIMMED),
    sql_hex_decode: Change(seqs=("0x",)),
}


def ALWAYS(v: str) -> bool:  # a constant, compared by identity
    """The test of transformations that change (nearly) every value."""
    return True


def _probe(seq: str) -> str:
    """A character of a sequence to look for first: a single character is found by `memchr`,
    many times faster than a sequence, and a value without it cannot hold the sequence. A mark
    is rarer in a value than a letter, a digit or a space (which would rarely rule it out)."""
    return min(seq, key=lambda c: c.isalnum() or c.isspace())


def may_change(fns: tuple[Transform, ...] | list[Transform]) -> Callable[[str], bool]:
    """A test that is False only when every one of these transformations leaves a value as it is
    (those without a `Change` always count as changing)."""
    specs = [CHANGES.get(fn) for fn in fns]
    if any(spec is None for spec in specs):
        return ALWAYS
    chars = "".join(sorted({c for spec in specs if spec is not None for c in spec.chars}))
    seqs = tuple(sorted({q for spec in specs if spec is not None for q in spec.seqs}))
    ends = "".join(sorted({c for spec in specs if spec is not None for c in spec.ends}))
    dot = any(spec.dot for spec in specs if spec is not None)
    nonascii = any(spec.nonascii for spec in specs if spec is not None)
    # a whole case of letters: compared with the value in the other case (which may also change
    # a non-ASCII letter: a change more is only a transformation more); other characters and
    # sequences: a substring search each, much faster than a regex over a long value
    upper = set(_UPPERS) <= set(chars)
    lower = set(_UPPERS.lower()) <= set(chars)
    cased = (_UPPERS if upper else "") + (_UPPERS.lower() if lower else "")
    needles = tuple(c for c in chars if c not in cased)
    # a sequence holding one of the characters cannot be there once they were all looked for
    probed = tuple((seq, _probe(seq)) for seq in seqs if not set(seq) & set(needles))

    def test(v: str) -> bool:
        if nonascii and not v.isascii():
            return True
        if upper and v.lower() != v:
            return True
        if lower and v.upper() != v:
            return True
        for needle in needles:
            if needle in v:
                return True
        for seq, probe in probed:
            if probe in v and seq in v:
                return True
        if ends and v and (v[0] in ends or v[-1] in ends):
            return True
        return dot and v == "."

    return test


def change_bits(fns: tuple[Transform, ...]) -> Callable[[str], int]:
    """A test whose result has bit i set when `may_change((fns[i],))` holds for a value: the
    tests of all the transformations in one pass, each character or sequence looked for once
    (most are shared) and the case of the value compared once."""
    always = upper = lower = nonascii = dot = 0
    needles: dict[str, int] = {}  # a character or sequence -> the transformations it may change
    ends: dict[str, int] = {}
    for index, fn in enumerate(fns):
        bit = 1 << index
        spec = CHANGES.get(fn)
        if spec is None:
            always |= bit
            continue
        chars = set(spec.chars)
        if set(_UPPERS) <= chars:  # as in `may_change`: a whole case is a comparison
            upper |= bit
            chars -= set(_UPPERS)
        if set(_UPPERS.lower()) <= chars:
            lower |= bit
            chars -= set(_UPPERS.lower())
        for needle in (*sorted(chars), *spec.seqs):
            needles[needle] = needles.get(needle, 0) | bit
        for char in spec.ends:
            ends[char] = ends.get(char, 0) | bit
        dot |= bit if spec.dot else 0
        nonascii |= bit if spec.nonascii else 0
    pairs = tuple((needle, bits) for needle, bits in needles.items() if len(needle) == 1)
    probed = tuple((seq, _probe(seq), bits) for seq, bits in needles.items() if len(seq) > 1)

    def test(v: str) -> int:
        changed = always
        if nonascii and not v.isascii():
            changed |= nonascii
        if upper and v.lower() != v:
            changed |= upper
        if lower and v.upper() != v:
            changed |= lower
        for needle, bits in pairs:
            if bits & ~changed and needle in v:
                changed |= bits
        for seq, probe, bits in probed:
            if bits & ~changed and probe in v and seq in v:
                changed |= bits
        if ends and v:
            changed |= ends.get(v[0], 0) | ends.get(v[-1], 0)
        if dot and v == ".":
            changed |= dot
        return changed

    return test
