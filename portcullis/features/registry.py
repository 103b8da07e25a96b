"""The explicit list of feature filters: config type -> build function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from portcullis.config import schema
from portcullis.engine.filter import Filter
from portcullis.engine.services import Services
from portcullis.features.actions import answer, headers, rewrite

Builder = Callable[[Any, Services], Filter]


def _build_waf(config: schema.WafFilter, services: Services) -> Filter:
    # imported on first use: the rule engine (hyperscan, regex, the CRS loader) costs a gateway
    # without a WAF route about 40 ms of start-up and several MiB per process
    from portcullis.features.waf import factory

    return factory.build(config, services)

BUILDERS: dict[type[schema.Strict], Builder] = {
    schema.HeadersFilter: headers.build,
    schema.RewriteFilter: rewrite.build,
    schema.RedirectFilter: answer.build_redirect,
    schema.RespondFilter: answer.build_respond,
    schema.WafFilter: _build_waf,
}


def build_filter(config: schema.Strict, services: Services) -> Filter:
    return BUILDERS[type(config)](config, services)
