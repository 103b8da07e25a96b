"""The WAF audit log: one JSON object per blocked (or, in detect mode, would-be blocked)
transaction, with the rules that matched. Matched data is cut short and secrets are masked:
credentials, cookies and password-like values never reach the file whole."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from portcullis.engine.context import RequestContext
from portcullis.features.waf.transaction import Match

MASK = "[masked]"
DATA_MAX = 120  # characters of matched data kept
MSG_MAX = 300

# headers whose whole value is a credential
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token", "x-csrf-token"}
)
# names of arguments (form fields, JSON keys, query parameters) that hold secrets
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|api[-_]?key|auth|session|sess_?id|credential|private|signature|otp|csrf|ssn|card|cvv",
    re.I,
)
_NAME = r"[A-Za-z0-9_.\-\[\]]*"
_SECRET_WORD = (
    r"(?:pass|pwd|secret|token|api[-_]?key|auth|session|sess_?id|credential|private|signature|otp|csrf|ssn|card|cvv)"
)
# secrets inside a longer value: `password=...` (query strings, form bodies, cookies), JSON
# `"token": "..."`, `Bearer ...` / `Basic ...`
_INLINE = (
    (re.compile(rf"((?:^|[?&;\s]){_NAME}{_SECRET_WORD}{_NAME}=)[^&;\s]*", re.I), rf"\g<1>{MASK}"),
    (re.compile(rf"(\"{_NAME}{_SECRET_WORD}{_NAME}\"\s*:\s*)\"(?:[^\"\\]|\\.)*\"?", re.I), rf'\g<1>"{MASK}"'),
    (re.compile(r"\b(bearer|basic|digest|negotiate)\s+[^\s,;]+", re.I), rf"\g<1> {MASK}"),
)


def scrub(text: str) -> str:
    """`text` with the secrets it holds inline replaced by the mask."""
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def is_secret(var_name: str) -> bool:
    """Whether a variable (`ARGS:password`, `REQUEST_HEADERS:authorization` ...) holds a secret."""
    collection, _, key = var_name.partition(":")
    collection = collection.upper()
    if collection.endswith("_NAMES"):
        return False  # a name is not the secret
    if collection == "REQUEST_COOKIES":
        return True
    if collection in ("REQUEST_HEADERS", "RESPONSE_HEADERS"):
        return key.lower() in _SECRET_HEADERS or bool(key and _SECRET_NAME.search(key))
    return bool(key and _SECRET_NAME.search(key))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def matched_data(var_name: str, value: str, text: str = "") -> str:
    """What a rule matched (`text`, else the start of the value), cut short and masked; a match
    that lies inside a secret of a longer value (a form body's password field) is masked whole."""
    if is_secret(var_name):
        return MASK
    clean = scrub(value)
    low = text.lower()  # (a phrase operator reports its phrase lower-cased)
    if not low or low not in value.lower():
        return _cut(clean, DATA_MAX)  # no part of the value to show (libinjection's fingerprint ...)
    if low not in clean.lower():
        return MASK
    return _cut(text, DATA_MAX)


def _rule(match: Match) -> dict[str, Any]:
    return {
        "id": match.rule_id,
        "phase": match.phase,
        "msg": _cut(scrub(match.msg), MSG_MAX),
        "severity": match.severity or None,
        "var": match.var_name,
        "data": matched_data(match.var_name, match.value, match.data),
    }


def _uri(ctx: RequestContext) -> str:
    target = ctx.target.decode("latin-1")
    path, sep, query = target.partition("?")
    return _cut(path + sep + scrub(query) if sep else path, 2048)


def audit_line(
    ctx: RequestContext,
    matches: list[Match],
    *,
    phase: int,
    action: str,
    status: int | None,
    inbound: int,
    outbound: int,
    decision: str,
) -> str:
    """The JSON line of one verdict. `action`: blocked, connection_cut or detected."""
    doc = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "request_id": ctx.request_id,
        "client": ctx.client_ip,
        "method": ctx.method,
        "host": ctx.host,
        "uri": _uri(ctx),
        "route": ctx.route.name if ctx.route is not None else None,
        "phase": phase,
        "action": action,
        "status": status,
        "anomaly_score": {"inbound": inbound, "outbound": outbound},
        "decision": scrub(decision),
        "rules": [_rule(m) for m in matches if m.rule_id],
    }
    return json.dumps(doc, ensure_ascii=False) + "\n"
