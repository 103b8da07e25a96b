"""Per-request WAF state: the request as collections, TX, matched variables, runtime ctl changes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from portcullis.features.waf import bodies
from portcullis.features.waf.actions import SetVar, template
from portcullis.features.waf.cache import Shared
from portcullis.features.waf.request import OWN_NUMBER, HttpRequest, header

__all__ = ["HttpRequest", "Match", "Pairs", "Transaction"]
from portcullis.features.waf.seclang import TargetSpec
from portcullis.features.waf.variables import Selected, Selector

Pairs = list[tuple[str, str]]
_KEPT = ("", "headers", "body", *sorted(OWN_NUMBER))  # what new request data leaves as it was


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

    # more attributes than an instance dict shares its keys for: slots make it cheap to build
    __slots__ = (
        "allowed",
        "body_key",
        "body_processor",
        "collections",
        "disruptive",
        "expiries",
        "folded",
        "gate_hits",
        "head_matched",
        "loaded",
        "matched_text",
        "matched_var",
        "matched_var_name",
        "matched_vars",
        "matches",
        "named",
        "numbers",
        "persistent",
        "removed_ids",
        "removed_ranges",
        "removed_tags",
        "removed_targets",
        "removed_targets_by_tag",
        "removing",
        "reported",
        "request",
        "rule_engine",
        "rule_id",
        "rule_msg",
        "rule_severity",
        "scalars",
        "selected",
        "shared",
        "started",
        "tx",
        "tx_dropped",
        "tx_keys",
        "tx_seed",
        "tx_seed_dropped",
        "tx_seed_keys",
        "unique_id",
    )

    def __init__(self, request: HttpRequest, unique_id: str = "", shared: Shared | None = None) -> None:
        self.request = request
        self.shared = shared if shared is not None else Shared()
        number, headers_number, head = self.shared.head(request)
        self.collections: dict[str, Pairs] = dict(head.collections)
        self.scalars: dict[str, str] = dict(head.scalars)
        self.scalars.update(
            REMOTE_ADDR=request.remote_addr,
            REMOTE_HOST=request.remote_addr,
            REMOTE_PORT=str(request.remote_port),
            SERVER_NAME=request.server_name,
            SERVER_PORT=str(request.server_port),
            UNIQUE_ID=unique_id,
        )
        self.tx: dict[str, str] = {}
        self.tx_dropped = 0  # TX keys removed so far (variables.Selector remembers TX:/regex/ keys)
        self.tx_keys: dict[int, tuple[int, int, list[str]]] = {}
        self.tx_seed: object | None = None  # what TX started as a copy of, with its keys in order
        self.tx_seed_keys: tuple[str, ...] = ()
        self.tx_seed_dropped = 0
        self.persistent: dict[str, dict[str, str]] = {"IP": {}, "GLOBAL": {}, "SESSION": {}, "USER": {}}
        # collection -> the key `initcol` loaded it by, and what it held then (persist.py)
        self.loaded: dict[str, tuple[str, dict[str, str]]] = {}
        self.expiries: dict[tuple[str, str], float] = {}  # (collection, variable) -> `expirevar` seconds
        self.matched_var = ""
        self.matched_var_name = ""
        self.matched_text = ""
        self.matched_vars: Pairs = []
        self.rule_id = 0
        self.rule_msg = ""
        self.rule_severity = ""
        self.head_matched = False  # the first link of the last rule run matched
        self.removed_ids: set[int] = set()
        self.removed_ranges: list[tuple[int, int]] = []
        self.removed_tags: list[str] = []
        self.removed_targets: dict[int, list[TargetSpec]] = {}
        self.removed_targets_by_tag: list[tuple[str, TargetSpec]] = []
        self.removing = False  # a ctl removed rules (by id, range or tag) in this transaction
        self.body_processor: str | None = head.processor
        self.rule_engine = "on"
        self.matches: list[Match] = []
        self.disruptive: Match | None = None
        self.allowed = False
        # what depends on the request data seen so far (dropped when more arrives)
        self.selected: dict[int, Selected] = {}  # selector slot -> its (name, value) pairs
        # source (request.source) -> its content's number
        self.numbers: dict[str, int] = {"": number, "headers": headers_number}
        self.body_key: tuple[str, str] | None = None  # (processor, body) once loaded
        self.gate_hits: dict[int, int] = {}  # phase -> prefilter ids any gated value hit (bits)
        self.named: dict[str, Pairs] = {}  # the *_NAMES collections
        self.folded: bool | None = None  # runs the folded plans (fold.py); None: not decided yet
        self.started = time.time()
        self.unique_id = unique_id
        self.reported = 0  # matches already counted in the metrics

    # ------------------------------------------------------------------ request data
    def header(self, name: str) -> str | None:
        return header(self.request.headers, name)

    def _args_combined(self) -> None:
        self.scalars["ARGS_COMBINED_SIZE"] = str(sum(len(k) + len(v) for k, v in self.collections["ARGS"]))

    def _forget_values(self) -> None:
        """New data arrived: the values cached from the collections before it are stale."""
        self.selected.clear()
        kept = [(k, self.numbers[k]) for k in _KEPT if k in self.numbers]  # head, body: unchanged
        self.numbers.clear()
        self.numbers.update(kept)
        self.gate_hits.clear()
        self.named.clear()

    def load_response_head(self, status: int, protocol: str, headers: Pairs) -> None:
        """The response variables of phase 3."""
        self._forget_values()
        self.collections["RESPONSE_HEADERS"] = headers
        content_type = length = ""
        for name, value in headers:
            low = name.lower()
            if low == "content-type" and not content_type:
                content_type = value
            elif low == "content-length" and not length:
                length = value.strip()
        self.scalars["RESPONSE_STATUS"] = str(status)
        self.scalars["RESPONSE_PROTOCOL"] = protocol
        self.scalars["RESPONSE_CONTENT_TYPE"] = content_type
        if length:
            self.scalars["RESPONSE_CONTENT_LENGTH"] = length  # absent when the body is chunked

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
        self.body_key = (self.body_processor or "", text)
        self.numbers.pop("body", None)
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
        found = self.collections.get(collection)
        if found is not None:
            return found
        if collection == "TX":
            return list(self.tx.items())
        value = self.scalars.get(collection)
        if value is not None:
            return [("", value)]
        if collection in _NAMED:
            names = self.named.get(collection)
            if names is None:
                names = self.named[collection] = [(k, k) for k, _ in self.collections.get(_NAMED[collection], ())]
            return names
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
        return []

    def number(self, name: str) -> int:
        """The number (cache.Numbers) of what a source (request.source) holds now: "" the head,
        "headers" its headers, "body" what the body processor made (the head, before it ran),
        else a collection. Hot paths look in `numbers` first: a number is never 0."""
        found = self.numbers.get(name)
        if found is None:
            if name == "body":
                if self.body_key is None:
                    found = self.numbers[""]
                else:
                    found = self.shared.numbers.body(self.numbers[""], *self.body_key)
            else:
                pairs = self.collections.get(name)  # what `items` gives first (empty: `number` at once)
                if pairs is not None:
                    found = self.shared.numbers.number(pairs)
                else:
                    value = self.scalars.get(name)
                    if value is not None:
                        found = self.shared.numbers.scalar(value)  # what `items` makes of it, in one step
                    else:
                        found = self.shared.numbers.number(self.items(name))
            self.numbers[name] = found
        return found

    def select(self, spec: TargetSpec, exclusions: list[TargetSpec]) -> Selected:
        """The (full name, value) pairs a target names, minus the excluded ones."""
        return Selector(spec, exclusions, -1).values(self)

    # ------------------------------------------------------------------ macros
    def expand(self, text: str) -> str:
        if "%{" not in text:
            return text
        return template(text).render(self)

    def set_var(self, expr: str) -> None:
        """`setvar:tx.a=1`, `tx.a=+5`, `tx.a=-1`, `!tx.a`, `tx.a` (sets 1); macros expanded."""
        SetVar(expr).apply(self)

    def fresh(self) -> bool:
        """Nothing has run on this transaction yet (no variable, match or ctl change)."""
        return (
            not self.tx
            and not any(self.persistent.values())
            and not self.matches
            and not self.matched_var_name
            and not self.removing
            and not self.removed_targets
            and not self.removed_targets_by_tag
            and self.rule_engine == "on"
            and self.disruptive is None
            and not self.allowed
        )

    def rule_removed(self, rule_id: int, tags: list[str]) -> bool:
        if rule_id in self.removed_ids:
            return True
        for lo, hi in self.removed_ranges:
            if lo <= rule_id <= hi:
                return True
        return any(t in self.removed_tags for t in tags) if self.removed_tags else False


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
