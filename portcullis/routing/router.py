"""Pick the route for a request: listener, host, path, method and headers; first match wins."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from portcullis.engine.chain import Chain
from portcullis.observability.stats import RouteCounters

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext
    from portcullis.upstream.group import UpstreamGroup


class HostMatcher:
    """`api.example.com` (exact) or `*.example.com` (any sub-domain, not the apex)."""

    __slots__ = ("exact", "suffix")

    def __init__(self, pattern: str) -> None:
        pattern = pattern.lower()
        self.exact: str | None = None
        self.suffix: str | None = None
        if pattern.startswith("*."):
            self.suffix = pattern[1:]
        else:
            self.exact = pattern

    def matches(self, host: str) -> bool:
        if self.exact is not None:
            return host == self.exact
        assert self.suffix is not None
        return host.endswith(self.suffix) and len(host) > len(self.suffix)


@dataclass(slots=True)
class CompiledRoute:
    name: str
    chain: Chain
    upstream: UpstreamGroup | None
    max_body: int
    counters: RouteCounters = field(default_factory=RouteCounters)
    listeners: frozenset[str] | None = None
    host: HostMatcher | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_regex: re.Pattern[str] | None = None
    methods: frozenset[str] | None = None
    headers: tuple[tuple[bytes, bytes | None], ...] = field(default_factory=tuple)

    def matches_everything(self) -> bool:
        return (
            self.host is None
            and self.path is None
            and self.path_prefix in (None, "/")
            and self.path_regex is None
            and self.methods is None
            and not self.headers
        )

    def matches(self, ctx: RequestContext) -> bool:
        if self.host is not None and not self.host.matches(ctx.host):
            return False
        if self.path is not None and ctx.path != self.path:
            return False
        if self.path_prefix is not None and not ctx.path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and self.path_regex.search(ctx.path) is None:
            return False
        if self.methods is not None and ctx.method not in self.methods:
            return False
        for name, wanted in self.headers:
            value = ctx.header(name)
            if value is None or (wanted is not None and value != wanted):
                return False
        return True


class Router:
    """The routes one listener serves, in file order."""

    __slots__ = ("catch_all", "routes")

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        self.routes = tuple(routes)
        first = self.routes[0] if self.routes else None
        self.catch_all = first if first is not None and first.matches_everything() else None
        """The first route, when it matches every request (no route after it can)."""

    def match(self, ctx: RequestContext) -> CompiledRoute | None:
        catch_all = self.catch_all
        if catch_all is not None and (catch_all.path_prefix is None or ctx.path.startswith("/")):
            return catch_all
        for route in self.routes:
            if route.matches(ctx):
                return route
        return None
