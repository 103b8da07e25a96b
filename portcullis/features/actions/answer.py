"""Routes that answer by themselves: redirects and fixed responses."""

from __future__ import annotations

import re
from typing import ClassVar

from portcullis.config.schema import RedirectFilter, RespondFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.messages import Response
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services

_VARIABLE = re.compile(r"\$(request_uri|path|query|host)")


class RedirectAction(Filter):
    kind: ClassVar[str] = "redirect"
    phase: ClassVar[Phase] = Phase.ROUTE

    def __init__(self, config: RedirectFilter) -> None:
        self.to = config.to
        self.status = config.status

    def location(self, ctx: RequestContext) -> str:
        # one pass: text from the request that looks like a variable is never expanded again
        values = {
            "request_uri": ctx.path + ("?" + ctx.query if ctx.query else ""),
            "path": ctx.path,
            "query": ctx.query,
            "host": ctx.host,
        }
        return _VARIABLE.sub(lambda m: values[m.group(1)], self.to)

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        location = self.location(ctx).encode("latin-1", "replace")
        ctx.decision = f"redirect {self.status}"
        return Response(self.status, [(b"Location", location), (b"Content-Type", b"text/plain")], b"")


class RespondAction(Filter):
    kind: ClassVar[str] = "respond"
    phase: ClassVar[Phase] = Phase.ROUTE

    def __init__(self, config: RespondFilter) -> None:
        self.status = config.status
        self.body = config.body.encode()
        self.headers = [(b"Content-Type", config.content_type.encode())] + [
            (k.encode(), v.encode()) for k, v in config.headers.items()
        ]

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        ctx.decision = f"respond {self.status}"
        return Response(self.status, list(self.headers), self.body)


def build_redirect(config: RedirectFilter, services: Services) -> Filter:
    return RedirectAction(config)


def build_respond(config: RespondFilter, services: Services) -> Filter:
    return RespondAction(config)
