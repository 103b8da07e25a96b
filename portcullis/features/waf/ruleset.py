"""Compile SecLang directives into an immutable rule set: rules per phase, markers resolved,
removals and target updates applied, operators and transformations compiled once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from portcullis.config.errors import closest
from portcullis.features.waf import transforms as T
from portcullis.features.waf.actions import Ctl, SetVar, Template, template
from portcullis.features.waf.cache import Budget, Shared
from portcullis.features.waf.operators import Operator, OperatorError, compile_operator, guard_regex
from portcullis.features.waf.persist import COLLECTION_ACTIONS, CollectionAction
from portcullis.features.waf.replay import Replay, groups_needed
from portcullis.features.waf.request import source
from portcullis.features.waf.screens import Screen, screen_of
from portcullis.features.waf.seclang import (
    Directive,
    RuleSpec,
    SecLangError,
    TargetSpec,
    parse_actions,
    parse_directives,
    parse_targets,
    rule_from_directive,
)
from portcullis.features.waf.variables import Selector, is_static

if TYPE_CHECKING:
    from portcullis.features.waf.gate import CollectionGate

SEVERITIES = {
    "0": "EMERGENCY",
    "1": "ALERT",
    "2": "CRITICAL",
    "3": "ERROR",
    "4": "WARNING",
    "5": "NOTICE",
    "6": "INFO",
    "7": "DEBUG",
}
_DISRUPTIVE = ("deny", "block", "pass", "allow", "drop", "redirect", "proxy")
# every action of ModSecurity's reference manual (lower case): a rule with another one is refused,
# as ModSecurity refuses it, rather than run without what a typo meant (`dney`)
ACTIONS = frozenset(
    {
        "accuracy", "allow", "append", "auditlog", "block", "capture", "chain", "ctl", "deny", "deprecatevar",
        "drop", "exec", "expirevar", "id", "initcol", "log", "logdata", "maturity", "msg", "multimatch",
        "noauditlog", "nolog", "pass", "pause", "phase", "prepend", "proxy", "redirect", "rev", "sanitisearg",
        "sanitisematched", "sanitisematchedbytes", "sanitiserequestheader", "sanitiseresponseheader", "setenv",
        "setrsc", "setsid", "setuid", "setvar", "severity", "skip", "skipafter", "status", "t", "tag", "ver",
        "xmlns",
    }
)  # fmt: skip
# every variable of ModSecurity's reference manual: a target naming another is refused (`ARG`)
VARIABLES = frozenset(
    {
        "ARGS", "ARGS_COMBINED_SIZE", "ARGS_GET", "ARGS_GET_NAMES", "ARGS_NAMES", "ARGS_POST", "ARGS_POST_NAMES",
        "AUTH_TYPE", "DURATION", "ENV", "FILES", "FILES_COMBINED_SIZE", "FILES_NAMES", "FILES_SIZES",
        "FILES_TMPNAMES", "FILES_TMP_CONTENT", "FULL_REQUEST", "FULL_REQUEST_LENGTH", "GEO", "GLOBAL",
        "HIGHEST_SEVERITY", "INBOUND_DATA_ERROR", "IP", "MATCHED_VAR", "MATCHED_VARS", "MATCHED_VAR_NAME",
        "MATCHED_VARS_NAMES", "MODSEC_BUILD", "MSC_PCRE_LIMITS_EXCEEDED", "MULTIPART_BOUNDARY_QUOTED",
        "MULTIPART_BOUNDARY_WHITESPACE", "MULTIPART_CRLF_LF_LINES", "MULTIPART_DATA_AFTER", "MULTIPART_DATA_BEFORE",
        "MULTIPART_FILE_LIMIT_EXCEEDED", "MULTIPART_FILENAME", "MULTIPART_HEADER_FOLDING",
        "MULTIPART_INVALID_HEADER_FOLDING", "MULTIPART_INVALID_PART", "MULTIPART_INVALID_QUOTING",
        "MULTIPART_LF_LINE", "MULTIPART_MISSING_SEMICOLON", "MULTIPART_NAME", "MULTIPART_PART_HEADERS",
        "MULTIPART_SEMICOLON_MISSING", "MULTIPART_STRICT_ERROR", "MULTIPART_UNMATCHED_BOUNDARY",
        "OUTBOUND_DATA_ERROR", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "REMOTE_HOST", "REMOTE_PORT",
        "REMOTE_USER", "REQBODY_ERROR", "REQBODY_ERROR_MSG", "REQBODY_PROCESSOR", "REQBODY_PROCESSOR_ERROR",
        "REQBODY_PROCESSOR_ERROR_MSG", "REQUEST_BASENAME", "REQUEST_BODY", "REQUEST_BODY_LENGTH", "REQUEST_COOKIES",
        "REQUEST_COOKIES_NAMES", "REQUEST_FILENAME", "REQUEST_HEADERS", "REQUEST_HEADERS_NAMES", "REQUEST_LINE",
        "REQUEST_METHOD", "REQUEST_PROTOCOL", "REQUEST_URI", "REQUEST_URI_RAW", "RESOURCE", "RESPONSE_BODY",
        "RESPONSE_CONTENT_LENGTH", "RESPONSE_CONTENT_TYPE", "RESPONSE_HEADERS", "RESPONSE_HEADERS_NAMES",
        "RESPONSE_PROTOCOL", "RESPONSE_STATUS", "RULE", "SCRIPT_BASENAME", "SCRIPT_FILENAME", "SCRIPT_GID",
        "SCRIPT_GROUPNAME", "SCRIPT_MODE", "SCRIPT_UID", "SCRIPT_USERNAME", "SDBM_DELETE_ERROR", "SERVER_ADDR",
        "SERVER_NAME", "SERVER_PORT", "SESSION", "SESSIONID", "STATUS_LINE", "STREAM_INPUT_BODY",
        "STREAM_OUTPUT_BODY", "TIME", "TIME_DAY", "TIME_EPOCH", "TIME_HOUR", "TIME_MIN", "TIME_MON", "TIME_SEC",
        "TIME_WDAY", "TIME_YEAR", "TX", "UNIQUE_ID", "URLENCODED_ERROR", "USER", "USERAGENT_IP", "USERID",
        "WEBAPPID", "WEBSERVER_ERROR_LOG", "XML",
    }
)  # fmt: skip
# ModSecurity's directives: the rule directives above act, the engine settings are accepted as
# they are (the config's own keys set what they would); another name is refused (`SecRul`)
_CASED = {
    name.lower(): name
    for name in (
        "SecAction", "SecArgumentSeparator", "SecArgumentsLimit", "SecAuditEngine", "SecAuditLog", "SecAuditLog2",
        "SecAuditLogDirMode", "SecAuditLogFileMode", "SecAuditLogFormat", "SecAuditLogParts",
        "SecAuditLogRelevantStatus", "SecAuditLogStorageDir", "SecAuditLogType", "SecCacheTransformations",
        "SecChrootDir", "SecCollectionTimeout", "SecComponentSignature", "SecConnEngine", "SecContentInjection",
        "SecCookieFormat", "SecCookieV0Separator", "SecDataDir", "SecDebugLog", "SecDebugLogLevel",
        "SecDefaultAction", "SecDisableBackendCompression", "SecGeoLookupDb", "SecGsbLookupDb", "SecGuardianLog",
        "SecHashEngine", "SecHashKey", "SecHashMethodPm", "SecHashMethodRx", "SecHashParam", "SecHttpBlKey",
        "SecInterceptOnError", "SecMarker", "SecPcreMatchLimit", "SecPcreMatchLimitRecursion", "SecReadStateLimit",
        "SecRemoteRules", "SecRemoteRulesFailAction", "SecRequestBodyAccess", "SecRequestBodyInMemoryLimit",
        "SecRequestBodyJsonDepthLimit", "SecRequestBodyLimit", "SecRequestBodyLimitAction",
        "SecRequestBodyNoFilesLimit", "SecResponseBodyAccess", "SecResponseBodyLimit", "SecResponseBodyLimitAction",
        "SecResponseBodyMimeType", "SecResponseBodyMimeTypesClear", "SecRule", "SecRuleEngine", "SecRuleInheritance",
        "SecRulePerfTime", "SecRuleRemoveById", "SecRuleRemoveByMsg", "SecRuleRemoveByTag", "SecRuleScript",
        "SecRuleUpdateActionById", "SecRuleUpdateTargetById", "SecRuleUpdateTargetByMsg", "SecRuleUpdateTargetByTag",
        "SecSensorId", "SecServerSignature", "SecStatusEngine", "SecStreamInBodyInspection",
        "SecStreamOutBodyInspection", "SecTmpDir", "SecTmpSaveUploadedFiles", "SecUnicodeMapFile", "SecUploadDir",
        "SecUploadFileLimit", "SecUploadFileMode", "SecUploadKeepFiles", "SecWebAppId", "SecWriteStateLimit",
        "SecXmlExternalEntity",
    )
}  # fmt: skip
DIRECTIVES = frozenset(_CASED)
_PHASES = {"request": 2, "response": 4, "logging": 5}


def _hint(word: str, choices: Iterable[str], shown: Callable[[str], str] = repr) -> str:
    """" (did you mean 'x'?)" for the closest of `choices`, or "": the ModSecurity-style errors
    of a rule name what they refuse first, then the name that was probably meant."""
    close = closest(word, choices)
    return f" (did you mean {shown(close)}?)" if close is not None else ""


@dataclass(slots=True, eq=False)
class Rule:
    id: int
    phase: int
    targets: list[TargetSpec]
    exclusions: list[TargetSpec]
    operator: Operator
    negated: bool
    transforms: tuple[T.Transform, ...]
    pipeline: int
    multimatch: bool
    capture: bool
    msg: str
    logdata: str
    severity: str
    tags: list[str]
    disruptive: str
    status: int
    setvars: list[str]
    ctls: list[str]
    skip: int
    skip_after: str
    is_action: bool
    paranoia: int
    source: str
    line: int
    allow_scope: str = ""
    chained: Rule | None = None
    selectors: tuple[Selector, ...] = ()  # the targets, compiled
    static: bool = False  # every target is request data (no TX, MATCHED_VAR ...)
    setvar_ops: tuple[SetVar, ...] = ()
    ctl_ops: tuple[Ctl, ...] = ()
    collection_ops: tuple[CollectionAction, ...] = ()  # initcol, expirevar, deprecatevar (persist.py)
    msg_template: Template = field(default_factory=lambda: template(""))
    op_cache: dict[str, list[str] | None] | None = None  # value -> the operator's result, when pure
    stages: dict[str, tuple[str, ...]] | None = None  # multiMatch: value -> what it tries (engine.py)
    # for each target, the numbers (cache.Numbers) of the sources (request.source) in whose values
    # it found nothing (number * targets + index), when that depends on them alone (request data,
    # a pure operator)
    memo: dict[int, bool] | None = None
    memo_collections: tuple[str, ...] = ()
    memo_source: str | None = None  # with a memo and one target: its source (request.source)
    # a quiet rule's later links and their memos (fold.group): one that found nothing in what it
    # reads now fails the rule, whatever the links before it find
    memo_chain: tuple[tuple[Rule, dict[int, bool]], ...] = ()
    # number -> what the link's matches wrote there (replay.py), when that depends on them alone
    replays: dict[int, Replay] | None = None
    replay_groups: int = 0  # the capture groups a match must set to be replayed
    prefilter: int = -1  # the pattern's id in the scan databases, -1: none
    scan_dbs: tuple[int, ...] = ()  # per selector: the scan database its values go through, -1: none
    fast_tx: tuple[str, str, int] | None = None  # `(&)TX:key "@op N"`: ((&)key, op, N), a quick verdict
    fast_pure: bool = False  # fast_tx/fast_multi, and nothing but flow control when it matches
    fast_multi: tuple[tuple[str, str, int], ...] = ()  # `(&)TX:a|(&)TX:b "@op N"`: one per target
    gate: bool = False  # prefiltered on static targets: skipped unless its pattern hit a phase-wide scan
    quiet: bool = False  # fails without a trace when it does not match (fold.group)
    screen: Screen | None = None  # clears a target's values at once (screens.py)


@dataclass(slots=True)
class Marker:
    name: str


Entry = Rule | Marker


@dataclass
class RuleSet:
    phases: dict[int, list[Entry]]
    markers: dict[int, dict[str, int]]
    rules_by_id: dict[int, Rule]
    pipelines: list[tuple[T.Transform, ...]]
    parents: list[int]
    prefilters: list[object] = field(default_factory=list)  # the scan databases (prefilter.py)
    # shared by the transactions (cache.py): pipeline -> value -> output, database -> value -> ids
    budget: Budget = field(default_factory=Budget)
    transform_cache: list[dict[str, str]] = field(default_factory=list)
    scan_cache: list[dict[str, int]] = field(default_factory=list)  # ids as bits (gate.py)
    shared: Shared = field(init=False)  # with the transactions: numbers, parsed heads
    # per phase: the collections its gated rules read, with how (prefilter.py, gate.py)
    gates: dict[int, tuple[CollectionGate, ...]] = field(default_factory=dict)
    # per pipeline: False only when no step can change a value (transforms.may_change)
    changes: list[Callable[[str], bool]] = field(init=False)

    def __post_init__(self) -> None:
        self.shared = Shared(self.budget)
        self.changes = [T.may_change(funcs) for funcs in self.pipelines]

    def phase_used(self, phase: int) -> bool:
        return any(isinstance(e, Rule) for e in self.phases.get(phase, ()))


class _Builder:
    def __init__(self) -> None:
        self.specs: list[RuleSpec | str] = []  # a str is a marker
        self.defaults: dict[int, list[tuple[str, str]]] = {}
        self.pending_chain: RuleSpec | None = None
        self.errors: list[str] = []

    def add(self, directives: list[Directive]) -> None:
        for d in directives:
            try:
                self._directive(d)
            except (SecLangError, OperatorError, ValueError) as exc:
                self.errors.append(f"{d.source}:{d.line}: {exc}")

    def _directive(self, d: Directive) -> None:
        name = d.name.lower()
        if name in ("secrule", "secaction"):
            spec = rule_from_directive(d)
            if self.pending_chain is not None:
                tail = self.pending_chain
                while tail.chained is not None:
                    tail = tail.chained
                tail.chained = spec
                if not any(k == "chain" for k, _ in spec.actions):
                    self.pending_chain = None
                return
            if any(k == "chain" for k, _ in spec.actions):
                self.pending_chain = spec
            self.specs.append(spec)
        elif name == "secmarker":
            self.specs.append(d.args[0] if d.args else "")
        elif name == "secdefaultaction":
            actions = parse_actions(d.args[0], d.source, d.line)
            phase = _phase(dict(actions).get("phase", "2"))
            self.defaults[phase] = actions
        elif name == "secruleremovebyid":
            ranges = _id_ranges(" ".join(d.args))
            self.specs = [s for s in self.specs if isinstance(s, str) or not _in_ranges(s.id, ranges)]
        elif name == "secruleremovebytag":
            pattern = re.compile(d.args[0])
            self.specs = [
                s for s in self.specs if isinstance(s, str) or not any(pattern.search(t) for t in s.tags)
            ]
        elif name == "secruleremovebymsg":
            pattern = re.compile(d.args[0])
            self.specs = [s for s in self.specs if isinstance(s, str) or not pattern.search(s.action("msg") or "")]
        elif name in ("secruleupdatetargetbyid", "secruleupdatetargetbytag", "secruleupdatetargetbymsg"):
            if len(d.args) < 2:
                raise SecLangError(f"{d.name} takes a selector and targets", d.source, d.line)
            targets = parse_targets(d.args[1], d.source, d.line)
            for spec in self._select(name, d.args[0]):
                for t in targets:
                    if t.negated:
                        spec.extra_exclusions.append(
                            TargetSpec(t.collection, t.key, t.key_regex, t.count, False)
                        )
                    else:
                        spec.targets.append(t)
        elif name == "secruleupdateactionbyid":
            actions = parse_actions(d.args[1], d.source, d.line)
            for spec in self._select("secruleupdateactionbyid", d.args[0]):
                names = {k for k, _ in actions}
                if names & set(_DISRUPTIVE):
                    spec.actions = [(k, v) for k, v in spec.actions if k not in _DISRUPTIVE]
                single = names & {"msg", "logdata", "severity", "status", "phase"}
                spec.actions = [(k, v) for k, v in spec.actions if k not in single] + actions
        elif name not in DIRECTIVES:
            raise ValueError(f"unknown directive {d.name}{_hint(name, DIRECTIVES, _CASED.__getitem__)}")
        # SecRuleEngine, SecRequestBodyAccess, SecComponentSignature ... carry no rule semantics here

    def _select(self, how: str, selector: str) -> list[RuleSpec]:
        rules = [s for s in self.specs if not isinstance(s, str)]
        if how.endswith("byid"):
            ranges = _id_ranges(selector)
            return [s for s in rules if _in_ranges(s.id, ranges)]
        pattern = re.compile(selector)
        if how.endswith("bytag"):
            return [s for s in rules if any(pattern.search(t) for t in s.tags)]
        return [s for s in rules if pattern.search(s.action("msg") or "")]


def _phase(value: str) -> int:
    value = value.strip().lower()
    if value in _PHASES:
        return _PHASES[value]
    if not value.isdigit() or not 1 <= int(value) <= 5:
        raise ValueError(f"bad phase {value!r}")
    return int(value)


def _id_ranges(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for part in re.split(r"[\s,]+", text.strip().strip('"')):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


def _in_ranges(rule_id: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= rule_id <= hi for lo, hi in ranges)


class _Compiler:
    def __init__(self, builder: _Builder, base_dirs: dict[str, str], guard: Guard | None = None) -> None:
        self.builder = builder
        self.base_dirs = base_dirs
        self.guard = guard
        self.pipelines: dict[tuple[str, ...], int] = {}
        self.pipeline_funcs: list[tuple[T.Transform, ...]] = []
        self.parents: list[int] = []
        self.selectors: dict[tuple[TargetSpec, tuple[TargetSpec, ...]], Selector] = {}

    def selector(self, spec: TargetSpec, exclusions: list[TargetSpec]) -> Selector:
        """Selectors are shared between rules, so what one selects is cached for all (per request)."""
        relevant = tuple(ex for ex in exclusions if ex.collection == spec.collection)
        key = (spec, relevant)
        found = self.selectors.get(key)
        if found is None:
            slot = len(self.selectors) if is_static(spec.collection) else -1
            found = self.selectors[key] = Selector(spec, list(relevant), slot)
        return found

    def pipeline(self, names: list[str]) -> tuple[int, tuple[T.Transform, ...]]:
        """Pipelines are numbered with every prefix first, so `parents[p]` is p minus its last step."""
        key = tuple(names)
        if key not in self.pipelines:
            parent = self.pipeline(names[:-1])[0] if names else -1
            self.pipelines[key] = len(self.pipeline_funcs)
            for name in names:
                if name.lower() not in T.TRANSFORMS:
                    raise ValueError(f"unknown transformation t:{name}{_hint(name.lower(), T.TRANSFORMS)}")
            self.pipeline_funcs.append(tuple(T.lookup(n) for n in names))
            self.parents.append(parent)
        index = self.pipelines[key]
        return index, self.pipeline_funcs[index]

    def rule(self, spec: RuleSpec, head: Rule | None) -> Rule:
        for name, _ in spec.actions:
            if name not in ACTIONS:
                raise ValueError(f"unknown action {name!r}{_hint(name, ACTIONS)}")
        for target in [*spec.targets, *spec.extra_exclusions]:
            if target.collection not in VARIABLES:
                raise ValueError(f"unknown variable {target.collection!r}{_hint(target.collection, VARIABLES)}")
        if head is None:
            written_id = spec.action("id")
            if written_id is None:
                raise ValueError("a rule needs an id (id:N)")
            if not written_id.isdigit() or int(written_id) == 0:
                raise ValueError(f"bad id {written_id!r}: a positive number")
        actions = list(spec.actions)
        phase = head.phase if head is not None else 2
        if head is None:
            for k, v in actions:
                if k == "phase":
                    phase = _phase(v)
            defaults = self.builder.defaults.get(phase, [])
            actions = [(k, v) for k, v in defaults if k not in ("phase", "id")] + actions
        names: list[str] = []
        disruptive, status, allow_scope = "", 403, ""
        setvars: list[str] = []
        ctls: list[str] = []
        stored: list[CollectionAction] = []
        tags: list[str] = []
        msg = logdata = severity = skip_after = ""
        skip = 0
        capture = multimatch = False
        paranoia = 1
        for k, v in actions:
            if k == "t":
                if v.lower() == "none":
                    names = []
                else:
                    names.append(v.lower())
            elif k in _DISRUPTIVE:
                disruptive = k
                if k == "allow":
                    allow_scope = v.lower()
            elif k == "status":
                status = int(v)
            elif k == "setvar":
                setvars.append(v)
            elif k == "ctl":
                ctls.append(v)
            elif k in COLLECTION_ACTIONS:
                stored.append(CollectionAction(k, v))
            elif k == "tag":
                tags.append(v)
                if v.startswith("paranoia-level/") and v[15:].isdigit():
                    paranoia = int(v[15:])
            elif k == "msg":
                msg = v
            elif k == "logdata":
                logdata = v
            elif k == "severity":
                severity = SEVERITIES.get(v, v.upper())
            elif k == "skip":
                skip = int(v)
            elif k == "skipafter":
                skip_after = v
            elif k == "capture":
                capture = True
            elif k == "multimatch":
                multimatch = True
        if disruptive == "block":
            # `block` is whatever the phase's SecDefaultAction says (the CRS: pass, and score)
            fallback = [k for k, _ in self.builder.defaults.get(phase, []) if k in _DISRUPTIVE and k != "block"]
            disruptive = fallback[-1] if fallback else "pass"
        pipeline, funcs = self.pipeline(names)
        base = self.base_dirs.get(spec.source, ".")
        operator = compile_operator(spec.operator, spec.operator_arg, base)
        if self.guard is not None and spec.source in self.guard.sources:
            operator = guard_regex(operator, self.guard.timeout, self.guard.max_input, spec.operator_negated)
        rule_id = spec.id if head is None else head.id
        targets = [t for t in spec.targets if not t.negated]
        exclusions = [TargetSpec(t.collection, t.key, t.key_regex, t.count, False) for t in spec.targets if t.negated]
        exclusions += spec.extra_exclusions
        rule = Rule(
            rule_id, phase, targets, exclusions, operator, spec.operator_negated, funcs, pipeline, multimatch,
            capture, msg, logdata, severity, tags, disruptive, status, setvars, ctls, skip, skip_after,
            spec.is_action, paranoia, spec.source, spec.line, allow_scope,
        )
        rule.selectors = tuple(self.selector(t, exclusions) for t in targets)
        rule.static = all(is_static(t.collection) for t in targets)
        rule.setvar_ops = tuple(SetVar(v) for v in setvars)
        rule.ctl_ops = tuple(Ctl(c) for c in ctls)
        rule.collection_ops = tuple(stored)
        rule.msg_template = template(msg)
        rule.screen = screen_of(operator, spec.operator_negated, funcs)
        arg = spec.operator_arg.strip()
        if (
            targets
            and all(t.collection == "TX" and t.key is not None and t.key_regex is None for t in targets)
            and not exclusions
            and not funcs
            and not spec.operator_negated
            and spec.operator in ("eq", "lt", "le", "gt", "ge")
            and arg.lstrip("-").isdigit()
        ):
            fast = tuple((("&" if t.count else "") + (t.key or ""), spec.operator, int(arg)) for t in targets)
            if len(fast) == 1:
                rule.fast_tx = fast[0]
            else:
                rule.fast_multi = fast
            rule.fast_pure = not (setvars or ctls or stored or msg or capture or spec.chained is not None)
        if spec.chained is not None:
            rule.chained = self.rule(spec.chained, rule)
        return rule


@dataclass(frozen=True)
class Guard:
    """The regex limits (`GuardedRx`) and the sources whose rules get them: the user's own."""

    sources: frozenset[str]
    timeout: float
    max_input: int


def compile_ruleset(sources: list[tuple[str, str]], guard: Guard | None = None) -> RuleSet:
    """Compile `(source name, text)` pairs in order; raise SecLangError listing every error."""
    builder = _Builder()
    base_dirs: dict[str, str] = {}
    for name, text in sources:
        base_dirs[name] = os.path.dirname(name) or "."
        try:
            builder.add(parse_directives(text, name))
        except SecLangError as exc:
            builder.errors.append(str(exc))
    compiler = _Compiler(builder, base_dirs, guard)
    phases: dict[int, list[Entry]] = {p: [] for p in range(1, 6)}
    rules_by_id: dict[int, Rule] = {}
    for spec in builder.specs:
        if isinstance(spec, str):
            for entries in phases.values():
                entries.append(Marker(spec))
            continue
        try:
            rule = compiler.rule(spec, None)
        except (OperatorError, KeyError, ValueError) as err:  # (not `exc`: a name has one type compiled)
            builder.errors.append(f"{spec.source}:{spec.line}: {err}")
            continue
        if rule.id in rules_by_id:
            first = rules_by_id[rule.id]
            where = f"{first.source}:{first.line}"
            builder.errors.append(f"{spec.source}:{spec.line}: duplicate rule id {rule.id} (first at {where})")
            continue
        phases[rule.phase].append(rule)
        if rule.id:
            rules_by_id[rule.id] = rule
    if builder.errors:
        raise SecLangError("; ".join(builder.errors[:20]), None)
    markers = {
        p: {e.name: i for i, e in enumerate(entries) if isinstance(e, Marker)} for p, entries in phases.items()
    }
    ruleset = RuleSet(phases, markers, rules_by_id, compiler.pipeline_funcs, compiler.parents)
    ruleset.transform_cache = [ruleset.budget.table({}) for _ in compiler.pipeline_funcs]
    for selector in compiler.selectors.values():
        if selector.slot >= 0:
            selector.shared = ruleset.budget.table({})
    for entries in phases.values():
        for entry in entries:
            link = entry if isinstance(entry, Rule) else None
            while link is not None:
                attach_caches(link, ruleset.budget)
                link = link.chained
    return ruleset


def attach_caches(link: Rule, budget: Budget) -> None:
    """Give a link with a pure operator its operator cache, and its memo when it reads request
    data alone (the caches are shared by transactions, under the rule set's budget)."""
    link.op_cache = link.memo = None
    link.memo_collections = ()
    link.memo_source = None
    link.stages = budget.table({}) if link.multimatch and link.transforms else None
    if link.operator.pure:
        link.op_cache = budget.table({})
        if link.selectors and all(sel.slot >= 0 for sel in link.selectors) and not link.is_action:
            link.memo = budget.table({})
            link.memo_collections = tuple(dict.fromkeys(source(sel.collection) for sel in link.selectors))
            if len(link.selectors) == 1:
                link.memo_source = link.selectors[0].source
    groups = groups_needed(link)
    link.replays = None if groups is None else budget.table({})
    link.replay_groups = groups or 0
