"""Macros (`%{tx.score}`), `setvar` and `ctl`, compiled once per rule.

A rule's texts are parsed when the rule set is compiled, so running an action is a few lookups
instead of a regex substitution and string splitting per match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portcullis.features.waf.transaction import Transaction

_MACRO = re.compile(r"%\{([^}]+)\}")
PERSISTENT = ("IP", "GLOBAL", "SESSION", "USER")

Part = str | Callable[["Transaction"], str]


def _resolver(ref: str) -> Callable[[Transaction], str]:
    """What `%{ref}` reads, as ModSecurity resolves it: `tx.key`, `rule.id`, `ip.key`, a
    variable's first item (`%{REQUEST_METHOD}`) or its item by key (`%{REQUEST_HEADERS.host}`)."""
    name, _, key = ref.partition(".")
    up = name.upper()
    low = key.lower()
    if up == "TX":
        return lambda txn: txn.tx.get(low, "")
    if up == "RULE":
        if low == "id":
            return lambda txn: str(txn.rule_id)
        if low == "msg":
            return lambda txn: txn.rule_msg
        if low == "severity":
            return lambda txn: txn.rule_severity
        return lambda txn: ""
    if up in PERSISTENT:
        return lambda txn: txn.persistent[up].get(low, "")
    if up == "MATCHED_VAR" and not key:
        return lambda txn: txn.matched_var if txn.matched_var_name else ""
    if up == "MATCHED_VAR_NAME" and not key:
        return lambda txn: txn.matched_var_name
    if key:

        def by_key(txn: Transaction) -> str:
            for k, v in txn.items(up):
                if k.lower() == low:
                    return v
            return ""

        return by_key

    def first(txn: Transaction) -> str:
        items = txn.items(up)
        return items[0][1] if items else ""

    return first


def _renderer(parts: tuple[Part, ...]) -> Callable[[Transaction], str]:
    """A function that joins the parts, specialised for the common shapes (one macro, a macro
    with text around it) so that rendering is a call or two."""
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0]
    if len(parts) == 2 and isinstance(parts[0], str) and not isinstance(parts[1], str):
        head, fn = parts[0], parts[1]
        return lambda txn: head + fn(txn)
    if len(parts) == 2 and not isinstance(parts[0], str) and isinstance(parts[1], str):
        fn, tail = parts[0], parts[1]
        return lambda txn: fn(txn) + tail
    if len(parts) == 3 and isinstance(parts[0], str) and not isinstance(parts[1], str) and isinstance(parts[2], str):
        head, middle, tail = parts[0], parts[1], parts[2]
        return lambda txn: head + middle(txn) + tail
    return lambda txn: "".join([p if isinstance(p, str) else p(txn) for p in parts])


class Template:
    """A text with macros; `render` expands them against a transaction."""

    __slots__ = ("parts", "refs", "render", "static", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: tuple[Part, ...] = ()
        self.refs: tuple[str | None, ...] = ()  # per part: the macro it expands (None: text)
        self.static = "%{" not in text
        self.render: Callable[[Transaction], str] = lambda txn: text
        if self.static:
            return
        parts: list[Part] = []
        refs: list[str | None] = []
        last = 0
        for m in _MACRO.finditer(text):
            if m.start() > last:
                parts.append(text[last : m.start()])
                refs.append(None)
            parts.append(_resolver(m.group(1)))
            refs.append(m.group(1))
            last = m.end()
        if last < len(text):
            parts.append(text[last:])
            refs.append(None)
        self.parts = tuple(parts)
        self.refs = tuple(refs)
        self.render = _renderer(self.parts)


_TEMPLATES: dict[str, Template] = {}


def template(text: str) -> Template:
    """The compiled template of a text (shared: rule texts are finite)."""
    found = _TEMPLATES.get(text)
    if found is None:
        found = Template(text)
        if len(_TEMPLATES) < 100_000:
            _TEMPLATES[text] = found
    return found


class SetVar:
    """`setvar:tx.a=1`, `tx.a=+5`, `tx.a=-1`, `!tx.a`, `tx.a` (sets 1); macros expanded."""

    __slots__ = ("collection", "has_value", "key", "key_rest", "remove", "target", "value")

    def __init__(self, expr: str) -> None:
        expr = expr.strip()
        self.remove = expr.startswith("!")
        if self.remove:
            expr = expr[1:]
        target, has_value, value = expr.partition("=")
        self.has_value = bool(has_value)
        self.target = template(target.strip())
        self.value = template(value)
        # a target without macros is split once, here; one whose macros come after the dot
        # (`tx.header_name_%{tx.0}`) keeps its collection and the start of its key
        self.collection = ""
        self.key = ""
        self.key_rest: Template | None = None
        if self.target.static:
            self.collection, self.key = _split_target(self.target.text)
        elif isinstance(self.target.parts[0], str) and "." in self.target.parts[0]:
            self.collection, self.key = _split_target(self.target.parts[0])
            rest = self.target.text[len(self.target.parts[0]) :]
            self.key_rest = template(rest)

    def apply(self, txn: Transaction) -> str:
        """Run it; the key it wrote (or removed)."""
        if self.key_rest is not None:
            collection, key = self.collection, self.key + self.key_rest.render(txn).lower()
        elif self.collection:
            collection, key = self.collection, self.key
        else:
            collection, key = _split_target(self.target.render(txn))
        store = txn.tx if collection == "TX" else txn.persistent.setdefault(collection, {})
        if self.remove:
            if store.pop(key, None) is not None and store is txn.tx:
                txn.tx_dropped += 1
            return key
        if not self.has_value:
            store[key] = "1"
            return key
        value = self.value.render(txn)
        if arithmetic(value):
            current = to_int(store.get(key, "0"))
            delta = int(value[1:].strip())
            store[key] = str(current + delta if value[0] == "+" else current - delta)
        else:
            store[key] = value
        return key


def arithmetic(value: str) -> bool:
    """A setvar value that adds to or takes from what the variable holds (`+5`, `-1`)."""
    amount = value[1:].strip()
    return value[:1] in "+-" and amount.isascii() and amount.isdigit()


def _split_target(target: str) -> tuple[str, str]:
    col, _, key = target.partition(".")
    return col.upper(), key.lower()


_LEADING_INT = re.compile(r"\s*([-+]?\d+)")


def to_int(text: str) -> int:
    """The leading integer of a text, 0 without one (ModSecurity's atoi)."""
    if text.isascii() and text.isdigit():
        return int(text)
    m = _LEADING_INT.match(text)
    return int(m.group(1)) if m else 0


class Ctl:
    """`ctl:name=value`: the name is parsed once, the value (which may hold macros) per use."""

    __slots__ = ("name", "value")

    def __init__(self, text: str) -> None:
        name, _, value = text.partition("=")
        self.name = name.strip().lower()
        self.value = template(value.strip())
