"""The config of the feature filters a route runs: a tagged union on ``type``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from portcullis.config.types import Duration, HeaderName, HeaderValue, Regex, Size, Strict


class HeaderOps(Strict):
    set: dict[HeaderName, HeaderValue] = {}
    add: dict[HeaderName, HeaderValue] = {}
    remove: list[HeaderName] = []


class HeadersFilter(Strict):
    type: Literal["headers"]
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


_GROUP_REF = re.compile(r"\$(\d+|\$)")


def rewrite_template(regex: str, replace: str) -> str:
    """Turn an nginx-style replacement (`$1` for a group, `$$` for a dollar, everything else
    literal) into a Python `re` template; ValueError for a group the regex does not have."""
    groups = re.compile(regex).groups
    parts: list[str] = []
    last = 0
    for m in _GROUP_REF.finditer(replace):
        parts.append(replace[last : m.start()].replace("\\", "\\\\"))
        ref = m.group(1)
        if ref == "$":
            parts.append("$")
        else:
            if int(ref) > groups:
                raise ValueError(f"replacement refers to group ${ref} but the regex has {groups} group(s)")
            parts.append(f"\\g<{ref}>")
        last = m.end()
    parts.append(replace[last:].replace("\\", "\\\\"))
    return "".join(parts)


class RewriteFilter(Strict):
    type: Literal["rewrite"]
    strip_prefix: str | None = None
    add_prefix: str | None = None
    regex: Regex | None = None
    replace: str | None = None
    """Groups are written `$1` as in nginx; everything else is literal."""

    @model_validator(mode="after")
    def _replacement(self) -> RewriteFilter:
        if self.regex is not None and self.replace is not None:
            rewrite_template(self.regex, self.replace)
        return self


class RedirectFilter(Strict):
    type: Literal["redirect"]
    to: str
    """Target URL; `$path` and `$query` are replaced by the request's."""
    status: Literal[301, 302, 303, 307, 308] = 302


class RespondFilter(Strict):
    type: Literal["respond"]
    status: int = Field(default=200, ge=200, le=599)
    body: str = ""
    content_type: HeaderValue = "text/plain; charset=utf-8"
    headers: dict[HeaderName, HeaderValue] = {}


class WafThreshold(Strict):
    inbound: int = Field(default=5, ge=1)
    outbound: int = Field(default=4, ge=1)


class WafExclusion(Strict):
    """Remove a rule (`rule_id` or `tag`), or with `target` only that target from it."""

    rule_id: int | None = None
    tag: str | None = None
    target: str | None = None
    """A SecLang variable, e.g. `ARGS:password` or `REQUEST_COOKIES:/^session/`."""

    @model_validator(mode="after")
    def _selects(self) -> WafExclusion:
        if self.rule_id is None and self.tag is None:
            raise ValueError("an exclusion needs rule_id or tag")
        return self


class WafRegexLimits(Strict):
    """Guards on the `@rx` of the config's own rules (`rules`, `rule_files`) against runaway regexes."""

    timeout: Duration = Field(default=0.1, le=10.0)
    """A search that runs longer is stopped and counts as a match (0: no limit)."""
    max_input: Size = Field(default=64 * 1024, ge=0)
    """Characters of a value a regex sees (the start of a longer one; 0: no cap)."""


def _compiles(source: str, text: str) -> None:
    # the WAF's own compiler is the judge of its language; imported here, when a config has rules
    from portcullis.features.waf.ruleset import compile_ruleset
    from portcullis.features.waf.seclang import SecLangError

    try:
        compile_ruleset([(source, text)])
    except (SecLangError, OSError) as exc:
        # an inline rule's places are lines within its text
        raise ValueError(re.sub(r"<rule>:(\d+): ", r"line \1: ", str(exc))) from None


def _inline_rules(text: str) -> str:
    _compiles("<rule>", text)
    return text


def _rule_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    _compiles(path, text)
    return path


InlineRules = Annotated[str, AfterValidator(_inline_rules)]
RuleFile = Annotated[str, AfterValidator(_rule_file)]


class WafFilter(Strict):
    type: Literal["waf"]
    crs: str | None = None
    """A Core Rule Set directory (e.g. /usr/share/modsecurity-crs); None: only `rules`/`rule_files`."""
    paranoia: int = Field(default=1, ge=1, le=4)
    mode: Literal["block", "detect"] = "block"
    anomaly_threshold: WafThreshold = WafThreshold()
    exclusions: list[WafExclusion] = []
    rules: list[InlineRules] = []
    """Inline SecLang rules, loaded after the CRS."""
    rule_files: list[RuleFile] = []
    max_body: Size = 128 * 1024
    """Request body bytes inspected; a longer body is rejected (413) or passed per `on_body_limit`."""
    on_body_limit: Literal["reject", "pass"] = "reject"
    status: int = Field(default=403, ge=400, le=599)
    response_inspection: bool = False
    """Run phases 3 and 4 (response head and body: the CRS data-leakage rules)."""
    max_response_body: Size = 64 * 1024
    """Response body bytes inspected (RESPONSE_BODY); the rest streams on uninspected."""
    response_body_types: list[str] = ["text/plain", "text/html", "text/xml"]
    """Media types whose bodies are inspected; phase 4 sees the others without a body."""
    response_body_mode: Literal["hold", "stream"] = "hold"
    """hold: the inspected part waits for phase 4, so a block is a clean answer; stream: bytes
    flow on as they come, and a block after some were sent cuts the connection."""
    audit_log: str | None = None
    """A JSON line per blocked (or, in detect mode, would-be blocked) transaction: `stdout`,
    `stderr` or a file (reopened on SIGUSR1)."""
    regex_limits: WafRegexLimits = WafRegexLimits()
    crs_settings: dict[str, str | int] = {}
    """CRS variables set before its rules run, as crs-setup.conf does (`allowed_methods`,
    `do_reput_block` ...): each becomes `setvar:tx.NAME=VALUE`."""

    @field_validator("crs_settings")
    @classmethod
    def _crs_settings(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for name, setting in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a CRS variable name (letters, digits and _)")
            if isinstance(setting, str) and re.search(r"['\"\\%\x00-\x1f]", setting):
                raise ValueError(f"the value of {name!r} may not hold quotes, backslashes, % or control characters")
        return value

    @field_validator("response_body_types")
    @classmethod
    def _media_types(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+", item):
                raise ValueError(f"{item!r} is not a media type such as text/html")
        return [item.lower() for item in value]

    @field_validator("crs")
    @classmethod
    def _crs_dir(cls, value: str | None) -> str | None:
        import os

        if value is not None and not os.path.isdir(value):
            raise ValueError(f"{value!r} is not a directory")
        return value

    @model_validator(mode="after")
    def _whole_rule_set(self) -> WafFilter:
        """The CRS files, the settings and the user's rules compile together, as a worker will
        compile them: a broken CRS file, or a user rule reusing a CRS id, is refused here with
        its place rather than failing the workers."""
        from portcullis.features.waf.factory import settings_of
        from portcullis.features.waf.loader import load_sources
        from portcullis.features.waf.ruleset import compile_ruleset
        from portcullis.features.waf.seclang import SecLangError

        try:
            sources = load_sources(settings_of(self))
            key = hash(tuple(sources))
            if key not in _COMPILED:  # routes and reloads with the same rules are checked once
                compile_ruleset(sources)
                _COMPILED.add(key)
        except (SecLangError, OSError) as exc:
            raise ValueError(str(exc)) from None
        return self


_COMPILED: set[int] = set()
"""Hashes of the rule sources that compiled (a few per config; 0.2 s each for the whole CRS)."""


FilterConfig = Annotated[
    HeadersFilter | RewriteFilter | RedirectFilter | RespondFilter | WafFilter,
    Field(discriminator="type"),
]
