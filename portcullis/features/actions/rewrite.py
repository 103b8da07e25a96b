"""Rewrite the path sent upstream: strip or add a prefix, or a regex replacement."""

from __future__ import annotations

import re
from typing import ClassVar

from portcullis.config.schema import RewriteFilter, rewrite_template
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services


class RewriteAction(Filter):
    kind: ClassVar[str] = "rewrite"
    phase: ClassVar[Phase] = Phase.FORWARD

    def __init__(self, config: RewriteFilter) -> None:
        self.strip_prefix = config.strip_prefix
        self.add_prefix = config.add_prefix
        self.regex = re.compile(config.regex) if config.regex else None
        self.replace = (
            rewrite_template(config.regex, config.replace) if config.regex and config.replace is not None else None
        )

    def rewrite(self, path: str) -> str:
        if self.strip_prefix and path.startswith(self.strip_prefix):
            path = path[len(self.strip_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        if self.regex is not None and self.replace is not None:
            path = self.regex.sub(self.replace, path, count=1)
        if self.add_prefix:
            path = self.add_prefix.rstrip("/") + path
        return path or "/"

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        path = self.rewrite(ctx.path)
        target = path.encode("latin-1")
        if ctx.query:
            target += b"?" + ctx.query.encode("latin-1")
        ctx.upstream_path = target
        return None


def build(config: RewriteFilter, services: Services) -> Filter:
    return RewriteAction(config)
