"""The explicit list of feature filters: config type -> build function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from portcullis.config import schema
from portcullis.engine.filter import Filter
from portcullis.engine.services import Services
from portcullis.features.actions import answer, headers, rewrite
from portcullis.features.waf import factory as waf

Builder = Callable[[Any, Services], Filter]

BUILDERS: dict[type[schema.Strict], Builder] = {
    schema.HeadersFilter: headers.build,
    schema.RewriteFilter: rewrite.build,
    schema.RedirectFilter: answer.build_redirect,
    schema.RespondFilter: answer.build_respond,
    schema.WafFilter: waf.build,
}


def build_filter(config: schema.Strict, services: Services) -> Filter:
    return BUILDERS[type(config)](config, services)
