"""Add, set and remove request and response headers."""

from __future__ import annotations

from typing import ClassVar

from portcullis.config.schema import HeaderOps, HeadersFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.messages import Headers, ResponseHead
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services


class _Ops:
    __slots__ = ("add", "drop", "set")

    def __init__(self, ops: HeaderOps) -> None:
        self.set = tuple((k.encode(), v.encode()) for k, v in ops.set.items())
        self.add = tuple((k.encode(), v.encode()) for k, v in ops.add.items())
        # a set header replaces every existing value of that name
        self.drop = frozenset(k.lower().encode() for k in ops.remove) | {k.lower() for k, _ in self.set}

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.drop)

    def apply(self, headers: Headers) -> None:
        if self.drop:
            headers[:] = [(k, v) for k, v in headers if k.lower() not in self.drop]
        headers.extend(self.set)
        headers.extend(self.add)


class HeadersAction(Filter):
    kind: ClassVar[str] = "headers"
    # request edits are made just before forwarding, so filters before it see what the client sent
    phase: ClassVar[Phase] = Phase.FORWARD

    def __init__(self, config: HeadersFilter) -> None:
        self.request_ops = _Ops(config.request)
        self.response_ops = _Ops(config.response)

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        self.request_ops.apply(ctx.headers)
        return None

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        self.response_ops.apply(head.headers)


def build(config: HeadersFilter, services: Services) -> Filter:
    return HeadersAction(config)
