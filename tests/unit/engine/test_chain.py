"""Compiling a route's filters into per-hook tuples."""

from __future__ import annotations

from typing import ClassVar

from portcullis.engine.chain import EMPTY_CHAIN, Chain, compile_chain
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.messages import Response, ResponseHead
from portcullis.engine.phases import Phase

HOOKS = ("on_request", "on_request_body", "on_upstream_response", "on_response", "on_response_body", "on_log")


class Auth(Filter):
    kind: ClassVar[str] = "auth"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return None

    def on_log(self, ctx: RequestContext) -> None:
        pass


class Route(Filter):
    kind: ClassVar[str] = "route"
    phase: ClassVar[Phase] = Phase.ROUTE

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return Response(200)


class Waf(Filter):
    kind: ClassVar[str] = "waf"
    phase: ClassVar[Phase] = Phase.INSPECT

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> Response | None:
        return None

    def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk


class Cache(Filter):
    kind: ClassVar[str] = "cache"
    phase: ClassVar[Phase] = Phase.CACHE_LOOKUP

    def on_upstream_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        pass

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        pass


class Security(Filter):
    kind: ClassVar[str] = "security"
    phase: ClassVar[Phase] = Phase.RESPOND

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        pass

    def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk


class Nothing(Filter):
    """Overrides no hook at all."""

    kind: ClassVar[str] = "nothing"
    phase: ClassVar[Phase] = Phase.LIMIT


class SubAuth(Auth):
    """Inherits its hooks from a filter that overrides them."""

    kind: ClassVar[str] = "sub_auth"
    phase: ClassVar[Phase] = Phase.AUTHORIZE


def owners(hooks: tuple[object, ...]) -> list[Filter]:
    out = []
    for hook in hooks:
        owner = getattr(hook, "__self__", None)
        assert isinstance(owner, Filter), hook
        out.append(owner)
    return out


def test_orders_filters_by_phase() -> None:
    security, cache, waf, auth, route = Security(), Cache(), Waf(), Auth(), Route()
    chain = compile_chain([security, cache, waf, auth, route])
    assert chain.filters == (route, auth, waf, cache, security)


def test_same_phase_keeps_written_order() -> None:
    first, second, third = Auth(), Auth(), Auth()
    chain = compile_chain([first, second, Route(), third])
    assert [f for f in chain.filters if isinstance(f, Auth)] == [first, second, third]
    assert owners(chain.on_request)[1:] == [first, second, third]


def test_keeps_only_overridden_hooks() -> None:
    route, auth, waf, cache, security, nothing = Route(), Auth(), Waf(), Cache(), Security(), Nothing()
    chain = compile_chain([security, nothing, cache, waf, auth, route])
    assert owners(chain.on_request) == [route, auth, waf]
    assert owners(chain.on_request_body) == [waf]
    assert owners(chain.on_log) == [auth]
    assert nothing in chain.filters
    for name in HOOKS:
        assert nothing not in owners(getattr(chain, name)), name


def test_hooks_are_bound_methods_of_the_filters() -> None:
    auth = Auth()
    chain = compile_chain([auth])
    (hook,) = chain.on_request
    assert hook.__self__ is auth  # type: ignore[attr-defined]
    assert hook.__func__ is Auth.on_request  # type: ignore[attr-defined]


def test_response_hooks_run_in_reverse() -> None:
    route, waf, cache, security = Route(), Waf(), Cache(), Security()
    chain = compile_chain([waf, security, route, cache])
    assert owners(chain.on_upstream_response) == [cache]
    assert owners(chain.on_response) == [security, cache]
    assert owners(chain.on_response_body) == [security, waf]


def test_reverse_keeps_same_phase_filters_mirrored() -> None:
    a, b = Cache(), Cache()
    chain = compile_chain([a, b])
    assert owners(chain.on_request) == []
    assert owners(chain.on_response) == [b, a]


def test_inherited_overrides_count() -> None:
    sub = SubAuth()
    chain = compile_chain([sub])
    assert owners(chain.on_request) == [sub]
    assert owners(chain.on_log) == [sub]
    assert chain.on_response == ()


def test_empty_chain_has_empty_tuples() -> None:
    for chain in (compile_chain([]), EMPTY_CHAIN):
        assert isinstance(chain, Chain)
        assert chain.filters == ()
        for name in HOOKS:
            assert getattr(chain, name) == (), name


def test_chain_of_filters_with_no_hooks_is_free() -> None:
    chain = compile_chain([Nothing(), Filter()])
    assert len(chain.filters) == 2
    for name in HOOKS:
        assert getattr(chain, name) == (), name


def test_chain_fields_are_tuples() -> None:
    chain = compile_chain([Route(), Waf(), Security()])
    assert isinstance(chain.filters, tuple)
    for name in HOOKS:
        assert isinstance(getattr(chain, name), tuple), name
