"""The SecLang parser: config text -> directives -> rule specs.

Only syntax lives here; turning specs into runnable rules is `ruleset.py`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class SecLangError(ValueError):
    def __init__(self, message: str, source: str | None = "<inline>", line: int = 0) -> None:
        # source None: the message names its places itself (compile_ruleset's list of errors)
        super().__init__(message if source is None else f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(slots=True)
class Directive:
    name: str
    args: list[str]
    source: str
    line: int


def _split_args(text: str, source: str, line: int) -> list[str]:
    """Split a directive line into words; double quotes group, `\\"` is a literal quote."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] in "\"'":
            quote = text[i]
            i += 1
            buf: list[str] = []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n and text[i + 1] == quote:
                    buf.append(quote)
                    i += 2
                    continue
                buf.append(text[i])
                i += 1
            if i >= n:
                raise SecLangError("unterminated quoted argument", source, line)
            i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and text[j] not in " \t":
                j += 1
            args.append(text[i:j])
            i = j
    return args


def parse_directives(text: str, source: str = "<inline>") -> list[Directive]:
    """Lines joined at a trailing backslash, comments dropped, each line split into words."""
    out: list[Directive] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not pending:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = "".join(pending).strip()
        pending = []
        if not joined or joined.startswith("#"):
            continue
        words = _split_args(joined, source, start)
        out.append(Directive(words[0], words[1:], source, start))
    if pending:
        joined = "".join(pending).strip()
        if joined and not joined.startswith("#"):
            words = _split_args(joined, source, start)
            out.append(Directive(words[0], words[1:], source, start))
    return out


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class TargetSpec:
    collection: str  # upper case, e.g. ARGS
    key: str | None = None  # lower-cased literal key
    key_regex: str | None = None
    count: bool = False
    negated: bool = False

    def text(self) -> str:
        out = ("!" if self.negated else "") + ("&" if self.count else "") + self.collection
        if self.key is not None:
            out += ":" + self.key
        elif self.key_regex is not None:
            out += ":/" + self.key_regex + "/"
        return out


def parse_targets(text: str, source: str = "<inline>", line: int = 0) -> list[TargetSpec]:
    """`ARGS|!ARGS:foo|&TX:x|REQUEST_COOKIES:/^re|gex$/|XML:/*`."""
    targets: list[TargetSpec] = []
    i, n = 0, len(text)
    while i < n:
        negated = count = False
        while i < n and text[i] in "!&":
            if text[i] == "!":
                negated = True
            else:
                count = True
            i += 1
        j = i
        while j < n and text[j] not in "|:":
            j += 1
        collection = text[i:j].strip().upper()
        if not collection:
            raise SecLangError(f"empty variable in {text!r}", source, line)
        key: str | None = None
        key_regex: str | None = None
        i = j
        if i < n and text[i] == ":":
            i += 1
            if i < n and text[i] == "/" and collection != "XML":
                k = i + 1
                while k < n and text[k] != "/":
                    k += 2 if text[k] == "\\" else 1
                key_regex = text[i + 1 : k]
                i = k + 1
            elif i < n and text[i] == "'":
                k = text.find("'", i + 1)
                if k < 0:
                    raise SecLangError(f"unterminated key in {text!r}", source, line)
                key = text[i + 1 : k]
                i = k + 1
            else:
                k = i
                while k < n and text[k] != "|":
                    k += 1
                key = text[i:k]
                i = k
            if key is not None:
                key = key.lower()
        targets.append(TargetSpec(collection, key, key_regex, count, negated))
        while i < n and text[i] in " \t":
            i += 1
        if i < n:
            if text[i] != "|":
                raise SecLangError(f"bad variable list {text!r}", source, line)
            i += 1
    return targets


# --------------------------------------------------------------------------- actions


def parse_actions(text: str, source: str = "<inline>", line: int = 0) -> list[tuple[str, str]]:
    """`id:1,phase:2,msg:'a, b',t:none` -> [(id, 1), (phase, 2), (msg, 'a, b'), (t, none)]."""
    actions: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,\r\n":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and text[j] not in ":,":
            j += 1
        name = text[i:j].strip().lower()
        value = ""
        i = j
        if i < n and text[i] == ":":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == "'":
                buf: list[str] = []
                i += 1
                while i < n and text[i] != "'":
                    if text[i] == "\\" and i + 1 < n and text[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    buf.append(text[i])
                    i += 1
                i += 1
                value = "".join(buf)
            else:
                j = i
                while j < n and text[j] != ",":
                    j += 1
                value = text[i:j].strip()
                i = j
        actions.append((name, value))
    return actions


# --------------------------------------------------------------------------- rules


@dataclass(slots=True)
class RuleSpec:
    """One SecRule or SecAction as written (a chain's links hang off its head)."""

    targets: list[TargetSpec]
    operator: str
    operator_arg: str
    operator_negated: bool
    actions: list[tuple[str, str]]
    source: str
    line: int
    chained: RuleSpec | None = None
    is_action: bool = False
    extra_exclusions: list[TargetSpec] = field(default_factory=list)

    def action(self, name: str) -> str | None:
        for key, value in self.actions:
            if key == name:
                return value
        return None

    def actions_named(self, name: str) -> list[str]:
        return [value for key, value in self.actions if key == name]

    @property
    def id(self) -> int:
        value = self.action("id")
        return int(value) if value and value.isdigit() else 0

    @property
    def tags(self) -> list[str]:
        return self.actions_named("tag")


_OPERATOR = re.compile(r"\s*(!?)\s*@([A-Za-z0-9]+)\s?(.*)\Z", re.S)


def parse_operator(text: str) -> tuple[str, str, bool]:
    """`!@rx foo` -> ("rx", "foo", True); without `@` the operator is `rx`."""
    m = _OPERATOR.match(text)
    if m:
        return m.group(2).lower(), m.group(3), bool(m.group(1))
    if text.startswith("!"):
        return "rx", text[1:], True
    return "rx", text, False


def rule_from_directive(d: Directive) -> RuleSpec:
    name = d.name.lower()
    if name == "secaction":
        if len(d.args) != 1:
            raise SecLangError("SecAction takes one argument", d.source, d.line)
        return RuleSpec([], "unconditionalmatch", "", False, parse_actions(d.args[0], d.source, d.line),
                        d.source, d.line, is_action=True)
    if len(d.args) not in (2, 3):
        raise SecLangError("SecRule takes variables, an operator and actions", d.source, d.line)
    targets = parse_targets(d.args[0], d.source, d.line)
    op, arg, neg = parse_operator(d.args[1])
    actions = parse_actions(d.args[2], d.source, d.line) if len(d.args) == 3 else []
    return RuleSpec(targets, op, arg, neg, actions, d.source, d.line)
