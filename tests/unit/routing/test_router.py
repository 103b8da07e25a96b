"""Host matching, route matching and first-match routing."""

from __future__ import annotations

import re
from typing import Any

import pytest

from portcullis.engine.chain import EMPTY_CHAIN
from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Headers
from portcullis.routing.router import CompiledRoute, HostMatcher, Router


def make_ctx(
    method: str = "GET", target: bytes = b"/", host: str = "example.com", headers: Headers | None = None
) -> RequestContext:
    return RequestContext(
        method=method,
        target=target,
        headers=headers if headers is not None else [(b"Host", host.encode())],
        version="1.1",
        host=host,
        client_ip="192.0.2.10",
        client_port=40000,
        scheme="http",
        listener="web",
        started=0.0,
    )


def route(name: str = "r", **match: Any) -> CompiledRoute:
    return CompiledRoute(name=name, chain=EMPTY_CHAIN, upstream=None, max_body=1024, **match)


# ---------------------------------------------------------------------------- HostMatcher


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("api.example.com", "api.example.com", True),
        ("API.Example.COM", "api.example.com", True),
        ("api.example.com", "www.example.com", False),
        ("api.example.com", "api.example.com.evil.net", False),
        ("api.example.com", "xapi.example.com", False),
        ("api.example.com", "example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.Example.com", "www.example.com", True),
        ("*.example.com", "example.com", False),  # not the apex
        ("*.example.com", ".example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "example.com.evil.net", False),
        ("*.example.com", "a.example.org", False),
    ],
)
def test_host_matcher(pattern: str, host: str, expected: bool) -> None:
    assert HostMatcher(pattern).matches(host) is expected


def test_host_matcher_kinds() -> None:
    exact = HostMatcher("api.example.com")
    assert exact.exact == "api.example.com"
    assert exact.suffix is None
    wild = HostMatcher("*.example.com")
    assert wild.exact is None
    assert wild.suffix == ".example.com"


# ---------------------------------------------------------------------------- CompiledRoute.matches


def test_route_without_conditions_matches_everything() -> None:
    r = route()
    assert r.matches(make_ctx())
    assert r.matches(make_ctx("DELETE", b"/anything?x=1", host="other.org"))


def test_route_host() -> None:
    r = route(host=HostMatcher("*.example.com"))
    assert r.matches(make_ctx(host="api.example.com"))
    assert not r.matches(make_ctx(host="example.com"))


def test_route_exact_path_ignores_query() -> None:
    r = route(path="/health")
    assert r.matches(make_ctx(target=b"/health"))
    assert r.matches(make_ctx(target=b"/health?verbose=1"))
    assert not r.matches(make_ctx(target=b"/health/"))
    assert not r.matches(make_ctx(target=b"/healthz"))
    assert not r.matches(make_ctx(target=b"/Health"))


def test_route_path_prefix() -> None:
    r = route(path_prefix="/api/")
    assert r.matches(make_ctx(target=b"/api/"))
    assert r.matches(make_ctx(target=b"/api/users/1?x=y"))
    assert not r.matches(make_ctx(target=b"/api"))
    assert not r.matches(make_ctx(target=b"/v1/api/"))
    assert not r.matches(make_ctx(target=b"/?p=/api/"))


def test_route_path_regex_searches_the_path_only() -> None:
    r = route(path_regex=re.compile(r"^/v\d+/items/\d+$"))
    assert r.matches(make_ctx(target=b"/v2/items/42"))
    assert r.matches(make_ctx(target=b"/v2/items/42?q=abc"))
    assert not r.matches(make_ctx(target=b"/v2/items/abc"))
    assert not r.matches(make_ctx(target=b"/x/v2/items/42"))
    unanchored = route(path_regex=re.compile(r"\.php$"))
    assert unanchored.matches(make_ctx(target=b"/a/b/index.php"))
    assert not unanchored.matches(make_ctx(target=b"/index.php.txt"))


def test_route_methods() -> None:
    r = route(methods=frozenset({"GET", "HEAD"}))
    assert r.matches(make_ctx("GET"))
    assert r.matches(make_ctx("HEAD"))
    assert not r.matches(make_ctx("POST"))
    assert not r.matches(make_ctx("get"))


def test_route_headers_exact_value_and_presence() -> None:
    r = route(headers=((b"x-version", b"2"), (b"authorization", None)))
    both = [(b"Host", b"a"), (b"X-Version", b"2"), (b"Authorization", b"Bearer t")]
    assert r.matches(make_ctx(headers=both))
    assert not r.matches(make_ctx(headers=[(b"X-Version", b"2")]))  # Authorization missing
    assert not r.matches(make_ctx(headers=[(b"X-Version", b"3"), (b"Authorization", b"t")]))
    assert not r.matches(make_ctx(headers=[(b"X-Version", b"20"), (b"Authorization", b"t")]))
    assert r.matches(make_ctx(headers=[(b"x-version", b"2"), (b"AUTHORIZATION", b"")]))  # present, empty


def test_route_all_conditions_must_hold() -> None:
    r = route(
        host=HostMatcher("api.example.com"),
        path_prefix="/v1/",
        methods=frozenset({"POST"}),
        headers=((b"content-type", b"application/json"),),
    )
    headers = [(b"Host", b"api.example.com"), (b"Content-Type", b"application/json")]
    good = make_ctx("POST", b"/v1/orders", host="api.example.com", headers=headers)
    assert r.matches(good)
    assert not r.matches(make_ctx("GET", b"/v1/orders", host="api.example.com", headers=headers))
    assert not r.matches(make_ctx("POST", b"/v2/orders", host="api.example.com", headers=headers))
    assert not r.matches(make_ctx("POST", b"/v1/orders", host="www.example.com", headers=headers))
    assert not r.matches(make_ctx("POST", b"/v1/orders", host="api.example.com", headers=headers[:1]))


def test_dot_segments_cannot_bypass_a_prefix_route() -> None:
    admin = route("admin", path_prefix="/admin")
    public = route("public", path_prefix="/")
    router = Router([admin, public])
    assert router.match(make_ctx(target=b"/public/../admin/users")) is admin


# ---------------------------------------------------------------------------- Router


def test_router_first_match_wins_in_order() -> None:
    specific = route("specific", path="/api/health")
    api = route("api", path_prefix="/api/")
    fallback = route("fallback", path_prefix="/")
    router = Router([specific, api, fallback])
    assert router.match(make_ctx(target=b"/api/health")) is specific
    assert router.match(make_ctx(target=b"/api/users")) is api
    assert router.match(make_ctx(target=b"/index.html")) is fallback
    # order decides, not specificity
    reversed_router = Router([fallback, api, specific])
    assert reversed_router.match(make_ctx(target=b"/api/health")) is fallback


def test_router_no_match_returns_none() -> None:
    router = Router([route("a", host=HostMatcher("a.example.com")), route("b", methods=frozenset({"POST"}))])
    assert router.match(make_ctx("GET", host="c.example.com")) is None
    assert Router([]).match(make_ctx()) is None


def test_router_routes_are_a_tuple_snapshot() -> None:
    routes = [route("a")]
    router = Router(routes)
    routes.append(route("b"))
    assert [r.name for r in router.routes] == ["a"]


def test_router_with_routes_compiled_from_config() -> None:
    from portcullis.config.schema import Config, Listener, Match, RespondFilter, Route
    from portcullis.engine.services import Services
    from portcullis.worker.build import compile_route

    config = Config(
        listeners=[Listener(name="web", listen="127.0.0.1:8080")],
        routes=[
            Route(
                name="api",
                match=Match(host="*.example.com", path_prefix="/v1/", methods=["get", "post"]),
                filters=[RespondFilter(type="respond", body="api")],
            ),
            Route(
                name="beta",
                match=Match(headers={"X-Beta": "*", "X-Tier": "gold"}),
                filters=[RespondFilter(type="respond", body="beta")],
            ),
            Route(name="regex", match=Match(path_regex=r"^/files/[a-z]+\.txt$"), filters=[]),
        ],
    )
    services = Services()
    compiled = [compile_route(r, config, {}, services) for r in config.routes]
    router = Router(compiled)
    api, beta, regex = compiled
    assert api.methods == frozenset({"GET", "POST"})
    assert beta.headers == ((b"x-beta", None), (b"x-tier", b"gold"))
    assert api.max_body == config.server.limits.max_body
    assert router.match(make_ctx("POST", b"/v1/x", host="api.example.com")) is api
    assert router.match(make_ctx("PUT", b"/v1/x", host="api.example.com")) is None
    assert router.match(make_ctx("GET", b"/v1/x", host="example.com")) is None
    beta_headers = [(b"Host", b"a"), (b"X-Beta", b"anything"), (b"X-Tier", b"gold")]
    assert router.match(make_ctx(headers=beta_headers)) is beta
    assert router.match(make_ctx(headers=beta_headers[:2])) is None
    assert router.match(make_ctx(target=b"/files/readme.txt")) is regex
    assert router.match(make_ctx(target=b"/files/README.txt")) is None
