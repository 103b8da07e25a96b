"""SecLang operators (`@rx`, `@pm`, ...), compiled once per rule.

An operator is called with the transformed value and a macro expander; it returns None for
no match, or the list of captures (`TX.0`, `TX.1` ...; possibly empty) for a match.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import libinjection  # type: ignore[import-not-found]
import regex as _regex  # type: ignore[import-untyped]

try:
    import ahocorasick  # type: ignore[import-not-found]

    HAVE_AHOCORASICK = True
except ImportError:  # pragma: no cover - optional accelerator
    HAVE_AHOCORASICK = False

Captures = list[str] | None
Expander = Callable[[str], str]
MACRO = re.compile(r"%\{([^}]+)\}")
log = logging.getLogger("portcullis.waf")


class OperatorError(ValueError):
    pass


class Operator:
    name = ""
    literal: str | None = None  # for the prefilter: a text a matching value contains (case aside)
    pattern: str | None = None  # for the prefilter: the regex source
    pure = True  # the result depends on the value alone (no macros, no time limit): cacheable
    needs: str = ""  # a value it matches holds one of these characters ("": any may match; screens.py)

    def __call__(self, value: str, expand: Expander) -> Captures:
        raise NotImplementedError


def compile_regex(pattern: str) -> Any:
    """ModSecurity compiles with DOTALL; Python's `re` first, the PCRE-closer `regex` as a fallback."""
    try:
        return re.compile(pattern, re.S | re.A)  # as PCRE without UCP: ASCII classes
    except (re.error, OverflowError, RecursionError):
        pass
    try:
        return _regex.compile(pattern.replace("\\z", "\\Z"), _regex.S | _regex.A | _regex.V0)
    except Exception as exc:  # regex raises its own error type
        raise OperatorError(f"invalid regular expression {pattern!r}: {exc}") from None


class Rx(Operator):
    name = "rx"

    def __init__(self, arg: str) -> None:
        self.pattern = arg
        self.regex = compile_regex(arg)

    def __call__(self, value: str, expand: Expander) -> Captures:
        m = self.regex.search(value)
        if m is None:
            return None
        return [m.group(0), *(g or "" for g in m.groups()[:9])]


class MacroRx(Operator):
    name = "rx"
    pure = False

    def __init__(self, arg: str) -> None:
        self.arg = arg

    def __call__(self, value: str, expand: Expander) -> Captures:
        m = compile_regex(expand(self.arg)).search(value)
        if m is None:
            return None
        return [m.group(0), *(g or "" for g in m.groups()[:9])]


def _regex_engine(pattern: str) -> Any:
    try:
        return _regex.compile(pattern.replace("\\z", "\\Z"), _regex.S | _regex.A | _regex.V0)
    except Exception as exc:  # regex raises its own error type
        raise OperatorError(f"invalid regular expression {pattern!r}: {exc}") from None


class GuardedRx(Rx):
    """The `@rx` of a user rule: run by the `regex` engine, which can stop a search after a time
    limit (Python's `re` cannot), over at most `max_input` characters of the value. A search
    stopped by the limit makes the rule fire (a match, or for `!@rx` no match): only the request
    whose data caused it is refused."""

    def __init__(
        self, arg: str, timeout: float, max_input: int, macro: bool = False, negated: bool = False
    ) -> None:
        self.pattern = None if macro else arg
        self.arg = arg
        self.macro = macro
        self.regex = None if macro else _regex_engine(arg)
        self.timeout = timeout or None
        self.max_input = max_input
        self.pure = False  # a search stopped by the time limit is not a property of the value
        self.on_timeout: Captures = None if negated else []

    def __call__(self, value: str, expand: Expander) -> Captures:
        if self.max_input and len(value) > self.max_input:
            value = value[: self.max_input]
        compiled = _regex_engine(expand(self.arg)) if self.macro else self.regex
        try:
            m = compiled.search(value, timeout=self.timeout)
        except TimeoutError:
            log.warning("a regex ran over its time limit (%ss), the rule fires: %.200r", self.timeout, self.arg)
            return self.on_timeout
        if m is None:
            return None
        return [m.group(0), *(g or "" for g in m.groups()[:9])]


def guard_regex(op: Operator, timeout: float, max_input: int, negated: bool = False) -> Operator:
    """The operator with the user-rule regex limits, if it is an `@rx`."""
    if isinstance(op, Rx) and not isinstance(op, GuardedRx):
        return GuardedRx(op.pattern or "", timeout, max_input, negated=negated)
    if isinstance(op, MacroRx):
        return GuardedRx(op.arg, timeout, max_input, macro=True, negated=negated)
    return op


class Pm(Operator):
    """Case-insensitive match of any of a set of phrases (Aho-Corasick for large sets)."""

    name = "pm"

    def __init__(self, phrases: list[str]) -> None:
        self.phrases = sorted({p.lower() for p in phrases if p})
        self.automaton: Any = None
        if HAVE_AHOCORASICK and len(self.phrases) > 8:
            automaton = ahocorasick.Automaton()
            for phrase in self.phrases:
                automaton.add_word(phrase, phrase)
            automaton.make_automaton()
            self.automaton = automaton

    def __call__(self, value: str, expand: Expander) -> Captures:
        low = value.lower()
        if self.automaton is not None:
            for _, phrase in self.automaton.iter(low):
                return [str(phrase)]
            return None
        for phrase in self.phrases:
            if phrase in low:
                return [phrase]
        return None


def _pm_words(arg: str) -> list[str]:
    # phrases are space separated; a quoted phrase may hold spaces
    return [a or b for a, b in re.findall(r"\"([^\"]*)\"|(\S+)", arg)]


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="latin-1") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:  # refused at the rule that names the file (ruleset.py adds its place)
        raise OperatorError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Str(Operator):
    def __init__(self, arg: str) -> None:
        self.arg = arg
        self.has_macro = "%{" in arg
        self.pure = not self.has_macro

    def with_arg(self, arg: str) -> Operator:
        """The same operator with another argument (a macro's constant value filled in)."""
        return type(self)(arg)

    def param(self, expand: Expander) -> str:
        return expand(self.arg) if self.has_macro else self.arg


class _Literal(_Str):
    """A string operator that matches only values containing its parameter."""

    def __init__(self, arg: str) -> None:
        super().__init__(arg)
        if not self.has_macro and arg:
            self.literal = arg


class Contains(_Literal):
    name = "contains"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [p] if p in value else None


class ContainsWord(_Literal):
    name = "containsword"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        if not p:
            return [p]
        return [p] if re.search(r"(?<![A-Za-z0-9_])" + re.escape(p) + r"(?![A-Za-z0-9_])", value) else None


class BeginsWith(_Literal):
    name = "beginswith"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [p] if value.startswith(p) else None


class EndsWith(_Literal):
    name = "endswith"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [p] if value.endswith(p) else None


class StrEq(_Literal):
    name = "streq"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [p] if value == p else None


class Within(_Str):
    name = "within"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [value] if value and value in p else None


class StrMatch(_Literal):
    name = "strmatch"

    def __call__(self, value: str, expand: Expander) -> Captures:
        p = self.param(expand)
        return [p] if p in value else None


_LEADING_INT = re.compile(r"\s*([-+]?\d+)")


def _to_int(text: str) -> int:
    """The leading integer of a text, 0 without one (ModSecurity's atoi)."""
    if text.isascii() and text.isdigit():
        return int(text)
    m = _LEADING_INT.match(text)
    return int(m.group(1)) if m else 0


class _Num(_Str):
    def test(self, value: int, number: int) -> bool:
        raise NotImplementedError

    def __init__(self, arg: str) -> None:
        super().__init__(arg)
        self.number = None if self.has_macro else _to_int(arg)

    def __call__(self, value: str, expand: Expander) -> Captures:
        number = self.number if self.number is not None else _to_int(self.param(expand))
        return [value] if self.test(_to_int(value), number) else None


class Eq(_Num):
    name = "eq"

    def test(self, value: int, number: int) -> bool:
        return value == number


class Ge(_Num):
    name = "ge"

    def test(self, value: int, number: int) -> bool:
        return value >= number


class Gt(_Num):
    name = "gt"

    def test(self, value: int, number: int) -> bool:
        return value > number


class Le(_Num):
    name = "le"

    def test(self, value: int, number: int) -> bool:
        return value <= number


class Lt(_Num):
    name = "lt"

    def test(self, value: int, number: int) -> bool:
        return value < number


class IpMatch(Operator):
    name = "ipmatch"

    def __init__(self, entries: list[str]) -> None:
        nets = []
        for entry in entries:
            entry = entry.strip()
            if entry:
                try:
                    nets.append(ipaddress.ip_network(entry, strict=False))
                except ValueError as exc:
                    raise OperatorError(f"@ipMatch: {entry!r} is not an address or network") from exc
        self.networks = nets

    def __call__(self, value: str, expand: Expander) -> Captures:
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            return None
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return [value]
        return None


class ValidateByteRange(Operator):
    """Matches when a byte is outside the allowed ranges (`10, 13, 32-126`)."""

    name = "validatebyterange"

    def __init__(self, arg: str) -> None:
        allowed: set[int] = set()
        for part in arg.replace(" ", "").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            try:
                a = int(lo)
                b = int(hi) if hi else a
            except ValueError as exc:
                raise OperatorError(f"@validateByteRange: bad range {part!r}") from exc
            if not (0 <= a <= b <= 255):
                raise OperatorError(f"@validateByteRange: bad range {part!r}")
            allowed.update(range(a, b + 1))
        bad = "".join(chr(c) for c in range(256) if c not in allowed)
        self.needs = bad  # what makes it match
        self.bad = re.compile("[" + re.escape(bad) + "]") if bad else None

    def __call__(self, value: str, expand: Expander) -> Captures:
        if self.bad is None:
            return None
        m = self.bad.search(value)
        return [m.group(0)] if m else None


_HEXDIGITS = set("0123456789abcdefABCDEF")


class ValidateUrlEncoding(Operator):
    name = "validateurlencoding"

    def __call__(self, value: str, expand: Expander) -> Captures:
        i = value.find("%")
        while i >= 0:
            pair = value[i + 1 : i + 3]
            if len(pair) < 2 or pair[0] not in _HEXDIGITS or pair[1] not in _HEXDIGITS:
                return [value]
            i = value.find("%", i + 3)
        return None


class ValidateUtf8Encoding(Operator):
    name = "validateutf8encoding"

    def __call__(self, value: str, expand: Expander) -> Captures:
        if value.isascii():
            return None
        try:
            value.encode("latin-1").decode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            return [value]
        return None


def _sqli_function() -> Any:
    """libinjection's `libinjection_sqli(input, length, fingerprint)`, from the binding's own
    library: the binding's `is_sql_injection` also turns the token vector into Python dicts,
    which costs more than the test (None: not exported, the binding is used)."""
    try:
        function = ctypes.CDLL(libinjection.__file__).libinjection_sqli
    except (OSError, AttributeError):  # pragma: no cover - a binding built another way
        return None
    function.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p)
    function.restype = ctypes.c_int
    return function


_SQLI: Any = _sqli_function()
_NO_FINGERPRINT: Any = ctypes.create_string_buffer(8)  # written by every clean test, never read


class DetectSQLi(Operator):
    name = "detectsqli"

    def __call__(self, value: str, expand: Expander) -> Captures:
        if not value:
            return None
        if _SQLI is None:  # pragma: no cover
            result = libinjection.is_sql_injection(value)
            return [str(result["fingerprint"])] if result["is_sqli"] else None
        # UTF-8, as the binding encodes; a lone surrogate (the transformations keep a low byte and
        # make none, but a value is any str) is tested as its bytes rather than raising
        data = value.encode("utf-8", "surrogatepass")
        if not _SQLI(data, len(data), _NO_FINGERPRINT):
            return None
        fingerprint = ctypes.create_string_buffer(8)  # its own buffer: the shared one is scratch
        _SQLI(data, len(data), fingerprint)
        return [fingerprint.value.decode("ascii", "replace")]


class DetectXSS(Operator):
    name = "detectxss"
    # libinjection's HTML5 tokenizer reports XSS only on a tag, comment or doctype (each opens
    # with `<`) or on an attribute's value (after `=`), whichever of its five contexts it tries
    needs = "<="

    def __call__(self, value: str, expand: Expander) -> Captures:
        if not value:
            return None
        return [value] if libinjection.is_xss(value).get("is_xss") else None


class Constant(Operator):
    pure = False  # nothing to save

    def __init__(self, name: str, result: bool) -> None:
        self.name = name
        self.result = result

    def __call__(self, value: str, expand: Expander) -> Captures:
        return [] if self.result else None


class VerifyCC(Operator):
    name = "verifycc"

    def __init__(self, arg: str) -> None:
        self.regex = compile_regex(arg)

    def __call__(self, value: str, expand: Expander) -> Captures:
        for m in self.regex.finditer(value):
            digits = [int(c) for c in m.group(0) if c.isdigit()]
            if len(digits) < 13:
                continue
            total = 0
            for i, d in enumerate(reversed(digits)):
                if i % 2:
                    d *= 2
                    if d > 9:
                        d -= 9
                total += d
            if total % 10 == 0:
                return [m.group(0)]
        return None


_STRING_OPS: dict[str, type[_Str]] = {
    "contains": Contains,
    "containsword": ContainsWord,
    "beginswith": BeginsWith,
    "endswith": EndsWith,
    "streq": StrEq,
    "within": Within,
    "strmatch": StrMatch,
    "eq": Eq,
    "ge": Ge,
    "gt": Gt,
    "le": Le,
    "lt": Lt,
}


def _data_file(name: str, base_dir: str) -> str:
    return name if os.path.isabs(name) else os.path.join(base_dir, name)


def compile_operator(name: str, arg: str, base_dir: str = ".") -> Operator:
    """Build the operator `@name arg`; files are looked up beside the rule file."""
    if name == "rx":
        return MacroRx(arg) if MACRO.search(arg) else Rx(arg)
    if name in _STRING_OPS:
        return _STRING_OPS[name](arg)
    if name == "pm":
        return Pm(_pm_words(arg))
    if name in ("pmfromfile", "pmf"):
        phrases: list[str] = []
        for file in arg.split():
            phrases.extend(_read_lines(_data_file(file, base_dir)))
        return Pm(phrases)
    if name == "ipmatch":
        return IpMatch(arg.split(","))
    if name in ("ipmatchfromfile", "ipmatchf"):
        return IpMatch(_read_lines(_data_file(arg.strip(), base_dir)))
    if name == "validatebyterange":
        return ValidateByteRange(arg)
    if name == "validateurlencoding":
        return ValidateUrlEncoding()
    if name == "validateutf8encoding":
        return ValidateUtf8Encoding()
    if name == "detectsqli":
        return DetectSQLi()
    if name == "detectxss":
        return DetectXSS()
    if name == "verifycc":
        return VerifyCC(arg)
    if name in ("unconditionalmatch", "geolookup"):
        return Constant(name, True)
    if name in ("nomatch", "rbl", "validateschema", "validatedtd", "inspectfile", "fuzzyhash", "gsblookup"):
        return Constant(name, False)
    raise OperatorError(f"unknown operator @{name}")
