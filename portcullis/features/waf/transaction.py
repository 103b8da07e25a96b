"""Per-request WAF state: the request as collections, TX, matched variables, runtime ctl changes."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from portcullis.features.waf import bodies
from portcullis.features.waf.seclang import TargetSpec

Pairs = list[tuple[str, str]]


@dataclass(slots=True)
class HttpRequest:
    """What the WAF sees of a request; text is latin-1 (one code point per byte)."""

    method: str
    uri: str  # the raw request target, as sent
    protocol: str = "HTTP/1.1"
    headers: Pairs = field(default_factory=list)
    body: bytes = b""
    remote_addr: str = "127.0.0.1"
    remote_port: int = 0
    server_name: str = "localhost"
    server_port: int = 80


@dataclass(slots=True)
class Match:
    rule_id: int
    msg: str
    severity: str
    var_name: str
    value: str
    tags: list[str]
    phase: int = 0
    data: str = ""  # what the operator matched (a regex's match, a phrase ...), or the value


_MACRO = re.compile(r"%\{([^}]+)\}")

# collections whose items are (key, value); *_NAMES are derived from them
_NAMED = {
    "ARGS_NAMES": "ARGS",
    "ARGS_GET_NAMES": "ARGS_GET",
    "ARGS_POST_NAMES": "ARGS_POST",
    "REQUEST_HEADERS_NAMES": "REQUEST_HEADERS",
    "REQUEST_COOKIES_NAMES": "REQUEST_COOKIES",
    "RESPONSE_HEADERS_NAMES": "RESPONSE_HEADERS",
    "FILES_NAMES": "FILES",
}


class Transaction:
    """One request's evaluation: built by the ruleset for every request, never shared."""

    def __init__(self, request: HttpRequest, unique_id: str = "") -> None:
        self.request = request
        self.collections: dict[str, Pairs] = {}
        self.scalars: dict[str, str] = {}
        self.tx: dict[str, str] = {}
        self.persistent: dict[str, dict[str, str]] = {"IP": {}, "GLOBAL": {}, "SESSION": {}, "USER": {}}
        self.matched_var = ""
        self.matched_var_name = ""
        self.matched_text = ""
        self.matched_vars: Pairs = []
        self.rule_id = 0
        self.rule_msg = ""
        self.rule_severity = ""
        self.removed_ids: set[int] = set()
        self.removed_ranges: list[tuple[int, int]] = []
        self.removed_tags: list[str] = []
        self.removed_targets: dict[int, list[TargetSpec]] = {}
        self.removed_targets_by_tag: list[tuple[str, TargetSpec]] = []
        self.body_processor: str | None = None
        self.rule_engine = "on"
        self.matches: list[Match] = []
        self.disruptive: Match | None = None
        self.allowed = False
        self.transformed: dict[int, dict[str, str]] = {}  # pipeline -> value -> transformed value
        self.scanned: dict[str, set[int]] = {}  # transformed value -> prefilter hits
        self.values_cache: dict[object, Pairs] = {}
        self.ruleset: Any = None  # the RuleSet being run (set by the evaluator)
        self.prefilter_union: dict[object, set[int]] = {}
        self.pipeline_hits: dict[tuple[int, int], set[int]] = {}
        self.static_items: dict[str, Pairs] = {}  # the items of request collections, until the body
        self.started = time.time()
        self.unique_id = unique_id
        self.reported = 0  # matches already counted in the metrics
        self._load_request_head()

    # ------------------------------------------------------------------ request data
    def _load_request_head(self) -> None:
        req = self.request
        uri = req.uri
        path = uri
        if "://" in uri[:10]:  # absolute form
            rest = uri.split("://", 1)[1]
            slash = rest.find("/")
            path = rest[slash:] if slash >= 0 else "/"
        filename, _, query = path.partition("?")
        filename = filename.partition("#")[0]
        basename = filename.rsplit("/", 1)[-1]
        headers = list(req.headers)
        cookies: Pairs = []
        for name, value in headers:
            if name.lower() == "cookie":
                for piece in value.split(";"):
                    piece = piece.strip()
                    if not piece:
                        continue
                    cname, _, cvalue = piece.partition("=")
                    cookies.append((cname.strip(), cvalue.strip()))
        args_get = bodies.parse_urlencoded(query)
        self.collections.update(
            {
                "ARGS_GET": args_get,
                "ARGS_POST": [],
                "ARGS": list(args_get),
                "REQUEST_HEADERS": headers,
                "REQUEST_COOKIES": cookies,
                "FILES": [],
                "FILES_SIZES": [],
                "FILES_TMPNAMES": [],
                "FILES_TMP_CONTENT": [],
                "MULTIPART_PART_HEADERS": [],
                "XML": [],
                "ENV": [],
                "GEO": [],
                "RESPONSE_HEADERS": [],
            }
        )
        line = f"{req.method} {uri} {req.protocol}" if req.protocol else f"{req.method} {uri}"
        self.scalars.update(
            {
                "REQUEST_METHOD": req.method,
                "REQUEST_URI": path,
                "REQUEST_URI_RAW": uri,
                "REQUEST_FILENAME": filename,
                "REQUEST_BASENAME": basename,
                "REQUEST_LINE": line,
                "REQUEST_PROTOCOL": req.protocol,
                "QUERY_STRING": query,
                "REMOTE_ADDR": req.remote_addr,
                "REMOTE_HOST": req.remote_addr,
                "REMOTE_PORT": str(req.remote_port),
                "SERVER_NAME": req.server_name,
                "SERVER_PORT": str(req.server_port),
                "SERVER_ADDR": "127.0.0.1",
                "UNIQUE_ID": self.unique_id,
                "REQBODY_ERROR": "0",
                "REQBODY_PROCESSOR_ERROR": "0",
                "INBOUND_DATA_ERROR": "0",
                "OUTBOUND_DATA_ERROR": "0",
                "URLENCODED_ERROR": "0",
                "AUTH_TYPE": "",
                "REMOTE_USER": "",
                "REQUEST_BODY_LENGTH": "0",
                "FULL_REQUEST_LENGTH": str(len(line) + sum(len(n) + len(v) + 4 for n, v in headers)),
            }
        )
        self._args_combined()
        content_type = self.header("content-type") or ""
        low = content_type.lower()
        if low.startswith("application/x-www-form-urlencoded"):
            self.body_processor = "URLENCODED"
        elif low.startswith("multipart/form-data"):
            self.body_processor = "MULTIPART"
        elif low.startswith("application/json") or "+json" in low:
            self.body_processor = "JSON"
        elif low.startswith(("text/xml", "application/xml")) or "+xml" in low:
            self.body_processor = "XML"

    def header(self, name: str) -> str | None:
        for key, value in self.request.headers:
            if key.lower() == name:
                return value
        return None

    def _args_combined(self) -> None:
        self.scalars["ARGS_COMBINED_SIZE"] = str(sum(len(k) + len(v) for k, v in self.collections["ARGS"]))

    def _forget_values(self) -> None:
        """New data arrived: the values cached from the collections before it are stale."""
        self.values_cache.clear()
        self.prefilter_union.clear()
        self.pipeline_hits.clear()
        self.static_items.clear()

    def load_response_head(self, status: int, protocol: str, headers: Pairs) -> None:
        """The response variables of phase 3."""
        self._forget_values()
        self.collections["RESPONSE_HEADERS"] = headers
        content_type = ""
        for name, value in headers:
            if name.lower() == "content-type":
                content_type = value
                break
        self.scalars["RESPONSE_STATUS"] = str(status)
        self.scalars["RESPONSE_PROTOCOL"] = protocol
        self.scalars["RESPONSE_CONTENT_TYPE"] = content_type

    def load_response_body(self, body: bytes) -> None:
        """RESPONSE_BODY for phase 4: the inspected start of the body, latin-1 like the request's."""
        self._forget_values()
        self.scalars["RESPONSE_BODY"] = body.decode("latin-1")

    def load_body(self, body: bytes) -> None:
        """Run the request body processor (at the start of phase 2)."""
        self._forget_values()
        text = body.decode("latin-1")
        if self.body_processor in (None, "URLENCODED"):
            # as in ModSecurity: the raw body only with the URL-encoded processor, or none
            self.scalars["REQUEST_BODY"] = text
        self.scalars["REQUEST_BODY_LENGTH"] = str(len(body))
        self.scalars["FULL_REQUEST_LENGTH"] = str(int(self.scalars["FULL_REQUEST_LENGTH"]) + len(body))
        processor = self.body_processor
        self.scalars["REQBODY_PROCESSOR"] = processor or ""
        if not body or processor is None:
            return
        posted: Pairs = []
        try:
            if processor == "URLENCODED":
                posted = bodies.parse_urlencoded(text)
            elif processor == "JSON":
                posted = bodies.parse_json(text)
            elif processor == "MULTIPART":
                mp = bodies.parse_multipart(text, self.header("content-type") or "")
                posted = mp.args
                self.collections["FILES"] = mp.files
                self.collections["FILES_SIZES"] = mp.files_sizes
                self.collections["MULTIPART_PART_HEADERS"] = mp.part_headers
                self.scalars["MULTIPART_STRICT_ERROR"] = "1" if mp.strict_error else "0"
                self.scalars["MULTIPART_UNMATCHED_BOUNDARY"] = "1" if mp.unmatched_boundary else "0"
                self.scalars["FILES_COMBINED_SIZE"] = str(sum(int(s) for _, s in mp.files_sizes))
                for flag in ("data_before", "data_after", "lf_line", "missing_end", "invalid_quoting"):
                    self.scalars["MULTIPART_" + flag.upper()] = "1" if mp.flags.get(flag) else "0"
                if mp.error:
                    raise bodies.BodyError(mp.error)
            elif processor == "XML":
                text_content, attrs = bodies.parse_xml(text)
                self.collections["XML"] = [("/*", text_content)] + [("//@*", a) for a in attrs]
        except bodies.BodyError as exc:
            self.scalars["REQBODY_ERROR"] = "1"
            self.scalars["REQBODY_PROCESSOR_ERROR"] = "1"
            self.scalars["REQBODY_ERROR_MSG"] = str(exc)
            self.scalars["REQBODY_PROCESSOR_ERROR_MSG"] = str(exc)
        self.collections["ARGS_POST"] = posted
        self.collections["ARGS"] = self.collections["ARGS_GET"] + posted
        self._args_combined()

    # ------------------------------------------------------------------ variables
    def items(self, collection: str) -> Pairs:
        """Every (key, value) of a variable; a scalar is one item keyed by its own name."""
        if collection == "TX":
            return list(self.tx.items())
        found = self.collections.get(collection)
        if found is not None:
            return found
        if collection in _NAMED:
            return [(k, k) for k, _ in self.collections.get(_NAMED[collection], ())]
        if collection in self.persistent:
            return list(self.persistent[collection].items())
        if collection == "MATCHED_VAR":
            return [("", self.matched_var)] if self.matched_var_name else []
        if collection == "MATCHED_VAR_NAME":
            return [("", self.matched_var_name)] if self.matched_var_name else []
        if collection == "MATCHED_VARS":
            return list(self.matched_vars)
        if collection == "MATCHED_VARS_NAMES":
            return [(k, k) for k, _ in self.matched_vars]
        if collection == "DURATION":
            return [("", str(int((time.time() - self.started) * 1e6)))]
        if collection.startswith("TIME"):
            return [("", _time_var(collection))]
        value = self.scalars.get(collection)
        return [("", value)] if value is not None else []

    def select(self, spec: TargetSpec, exclusions: list[TargetSpec]) -> Pairs:
        """The (full name, value) pairs a target names, minus the excluded ones."""
        collection = spec.collection
        if spec.key is not None and collection == "TX" and not exclusions:
            value = self.tx.get(spec.key)  # TX keys are stored lower-cased
            return [] if value is None else [(f"TX:{spec.key}", value)]
        items = self.items(collection)
        if not items:
            return []
        out: Pairs = []
        key, key_re = spec.key, spec.key_regex
        compiled = _key_regex(key_re) if key_re is not None else None
        relevant = [ex for ex in exclusions if ex.collection == collection] if exclusions else None
        for k, v in items:
            if key is not None and k != key and k.lower() != key:
                continue
            if compiled is not None and not compiled.search(k):
                continue
            if relevant and _excluded(collection, k, relevant):
                continue
            out.append((f"{collection}:{k}" if k else collection, v))
        return out

    # ------------------------------------------------------------------ macros
    def expand(self, text: str) -> str:
        if "%{" not in text:
            return text
        return _MACRO.sub(self._macro, text)

    def _macro(self, m: re.Match[str]) -> str:
        ref = m.group(1)
        name, _, key = ref.partition(".")
        up = name.upper()
        if up == "TX":
            return self.tx.get(key.lower(), "")
        if up == "RULE":
            low = key.lower()
            if low == "id":
                return str(self.rule_id)
            if low == "msg":
                return self.rule_msg
            if low == "severity":
                return self.rule_severity
            return ""
        if up in self.persistent:
            return self.persistent[up].get(key.lower(), "")
        items = self.items(up)
        if key:
            low = key.lower()
            for k, v in items:
                if k.lower() == low:
                    return v
            return ""
        return items[0][1] if items else ""

    def set_var(self, expr: str) -> None:
        """`setvar:tx.a=1`, `tx.a=+5`, `tx.a=-1`, `!tx.a`, `tx.a` (sets 1); macros expanded."""
        expr = expr.strip()
        remove = expr.startswith("!")
        if remove:
            expr = expr[1:]
        target, has_value, value = expr.partition("=")
        target = self.expand(target.strip())
        col, _, key = target.partition(".")
        store = self.tx if col.upper() == "TX" else self.persistent.setdefault(col.upper(), {})
        key = key.lower()
        if remove:
            store.pop(key, None)
            return
        if not has_value:
            store[key] = "1"
            return
        value = self.expand(value)
        if value[:1] in "+-" and len(value) > 1 and value[1:].strip().isdigit():
            current = _to_int(store.get(key, "0"))
            delta = int(value[1:].strip())
            store[key] = str(current + delta if value[0] == "+" else current - delta)
        else:
            store[key] = value

    def rule_removed(self, rule_id: int, tags: list[str]) -> bool:
        if rule_id in self.removed_ids:
            return True
        for lo, hi in self.removed_ranges:
            if lo <= rule_id <= hi:
                return True
        return any(t in self.removed_tags for t in tags) if self.removed_tags else False


def _to_int(text: str) -> int:
    m = re.match(r"\s*([-+]?\d+)", text)
    return int(m.group(1)) if m else 0


_KEY_REGEXES: dict[str, re.Pattern[str]] = {}


def _key_regex(pattern: str) -> re.Pattern[str]:
    compiled = _KEY_REGEXES.get(pattern)
    if compiled is None:
        compiled = _KEY_REGEXES[pattern] = re.compile(pattern, re.I)
    return compiled


def _excluded(collection: str, key: str, exclusions: list[TargetSpec]) -> bool:
    low = key.lower()
    for ex in exclusions:
        if ex.collection != collection:
            continue
        if ex.key is None and ex.key_regex is None:
            return True
        if ex.key is not None and ex.key == low:
            return True
        if ex.key_regex is not None and _key_regex(ex.key_regex).search(key):
            return True
    return False


def _time_var(name: str) -> str:
    now = time.localtime()
    return {
        "TIME": time.strftime("%H:%M:%S", now),
        "TIME_DAY": str(now.tm_mday),
        "TIME_EPOCH": str(int(time.time())),
        "TIME_HOUR": str(now.tm_hour),
        "TIME_MIN": str(now.tm_min),
        "TIME_MON": str(now.tm_mon),
        "TIME_SEC": str(now.tm_sec),
        "TIME_WDAY": str(now.tm_wday),
        "TIME_YEAR": str(now.tm_year),
    }.get(name, "")
