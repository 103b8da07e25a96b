"""Route actions: header edits, path rewrites, redirects and fixed responses."""

from __future__ import annotations

import pytest

from portcullis.config.schema import HeaderOps, HeadersFilter, RedirectFilter, RespondFilter, RewriteFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Headers, Response, ResponseHead
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services
from portcullis.features.actions.answer import RedirectAction, RespondAction
from portcullis.features.actions.headers import HeadersAction
from portcullis.features.actions.rewrite import RewriteAction
from portcullis.features.registry import build_filter


def make_ctx(target: bytes = b"/", headers: Headers | None = None, host: str = "shop.example") -> RequestContext:
    return RequestContext(
        method="GET",
        target=target,
        headers=headers if headers is not None else [(b"Host", host.encode())],
        version="1.1",
        host=host,
        client_ip="192.0.2.1",
        client_port=1234,
        scheme="https",
        listener="web",
        started=0.0,
    )


# ---------------------------------------------------------------------------- headers


def test_request_headers_set_add_remove() -> None:
    action = HeadersAction(
        HeadersFilter(
            type="headers",
            request=HeaderOps(
                set={"X-Env": "prod"},
                add={"X-Via": "portcullis"},
                remove=["X-Debug", "Cookie"],
            ),
        )
    )
    ctx = make_ctx(
        headers=[
            (b"Host", b"a"),
            (b"x-env", b"dev"),
            (b"X-ENV", b"test"),
            (b"X-Via", b"edge"),
            (b"x-debug", b"1"),
            (b"Cookie", b"s=1"),
            (b"Accept", b"*/*"),
        ]
    )
    assert action.on_request(ctx) is None
    assert ctx.headers == [
        (b"Host", b"a"),
        (b"X-Via", b"edge"),  # add keeps the existing value
        (b"Accept", b"*/*"),
        (b"X-Env", b"prod"),  # set replaces every value, whatever the case
        (b"X-Via", b"portcullis"),
    ]


def test_request_headers_edit_in_place() -> None:
    action = HeadersAction(HeadersFilter(type="headers", request=HeaderOps(add={"X-A": "1"})))
    headers: Headers = [(b"Host", b"a")]
    ctx = make_ctx(headers=headers)
    action.on_request(ctx)
    assert ctx.headers is headers
    assert headers == [(b"Host", b"a"), (b"X-A", b"1")]


def test_response_headers_set_add_remove() -> None:
    action = HeadersAction(
        HeadersFilter(
            type="headers",
            response=HeaderOps(
                set={"Cache-Control": "no-store"},
                add={"Set-Cookie": "seen=1"},
                remove=["Server", "X-Powered-By"],
            ),
        )
    )
    head = ResponseHead(
        200,
        [
            (b"Server", b"nginx"),
            (b"cache-control", b"max-age=60"),
            (b"Set-Cookie", b"a=1"),
            (b"x-powered-by", b"php"),
            (b"Content-Type", b"text/html"),
        ],
    )
    action.on_response(make_ctx(), head)
    assert head.headers == [
        (b"Set-Cookie", b"a=1"),
        (b"Content-Type", b"text/html"),
        (b"Cache-Control", b"no-store"),
        (b"Set-Cookie", b"seen=1"),
    ]
    assert head.status == 200


def test_request_ops_do_not_touch_responses_and_vice_versa() -> None:
    action = HeadersAction(HeadersFilter(type="headers", request=HeaderOps(remove=["Server"])))
    head = ResponseHead(200, [(b"Server", b"x")])
    action.on_response(make_ctx(), head)
    assert head.headers == [(b"Server", b"x")]
    action = HeadersAction(HeadersFilter(type="headers", response=HeaderOps(remove=["Accept"])))
    ctx = make_ctx(headers=[(b"Accept", b"*/*")])
    action.on_request(ctx)
    assert ctx.headers == [(b"Accept", b"*/*")]


def test_headers_action_phase_and_registry() -> None:
    config = HeadersFilter(type="headers", request=HeaderOps(set={"X-A": "1"}))
    flt = build_filter(config, Services())
    assert isinstance(flt, HeadersAction)
    assert flt.phase == Phase.FORWARD
    assert flt.kind == "headers"


def test_empty_header_ops_change_nothing() -> None:
    action = HeadersAction(HeadersFilter(type="headers"))
    headers: Headers = [(b"Host", b"a"), (b"X", b"1")]
    action.on_request(make_ctx(headers=headers))
    assert headers == [(b"Host", b"a"), (b"X", b"1")]
    assert not action.request_ops
    assert not action.response_ops


# ---------------------------------------------------------------------------- rewrite


def rewrite(config: RewriteFilter, target: bytes) -> bytes:
    ctx = make_ctx(target)
    assert RewriteAction(config).on_request(ctx) is None
    return ctx.upstream_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/api/users", b"/users"),
        (b"/api/users?page=2&q=a%20b", b"/users?page=2&q=a%20b"),
        (b"/api", b"/"),
        (b"/api/", b"/"),
        (b"/api?x=1", b"/?x=1"),
        (b"/other/api/users", b"/other/api/users"),
        (b"/API/users", b"/API/users"),
    ],
)
def test_rewrite_strip_prefix(target: bytes, expected: bytes) -> None:
    assert rewrite(RewriteFilter(type="rewrite", strip_prefix="/api"), target) == expected


@pytest.mark.parametrize(
    ("prefix", "target", "expected"),
    [
        ("/v2", b"/users", b"/v2/users"),
        ("/v2/", b"/users", b"/v2/users"),
        ("/v2", b"/users?x=1", b"/v2/users?x=1"),
        ("/v2", b"/", b"/v2/"),
    ],
)
def test_rewrite_add_prefix(prefix: str, target: bytes, expected: bytes) -> None:
    assert rewrite(RewriteFilter(type="rewrite", add_prefix=prefix), target) == expected


def test_rewrite_strip_then_add() -> None:
    config = RewriteFilter(type="rewrite", strip_prefix="/public", add_prefix="/internal")
    assert rewrite(config, b"/public/a/b?c=d") == b"/internal/a/b?c=d"


def test_rewrite_regex_with_dollar_groups_keeps_query() -> None:
    config = RewriteFilter(type="rewrite", regex=r"^/users/(\d+)/posts/(\w+)$", replace="/v2/posts/$2/by/$1")
    assert rewrite(config, b"/users/42/posts/hello?full=1") == b"/v2/posts/hello/by/42?full=1"
    config = RewriteFilter(type="rewrite", regex=r"^/old/(.*)$", replace="/new/$1")
    assert rewrite(config, b"/old/a/b?keep=1&this=2") == b"/new/a/b?keep=1&this=2"
    assert rewrite(config, b"/unrelated?keep=1") == b"/unrelated?keep=1"


def test_rewrite_regex_replaces_the_first_match_only() -> None:
    config = RewriteFilter(type="rewrite", regex="a", replace="b")
    assert rewrite(config, b"/aaa") == b"/baa"


def test_rewrite_regex_multi_digit_group() -> None:
    pattern = "^/" + "/".join(["(\\w)"] * 10) + "$"
    config = RewriteFilter(type="rewrite", regex=pattern, replace="/$10$1")
    assert rewrite(config, b"/a/b/c/d/e/f/g/h/i/j") == b"/ja"


def test_rewrite_regex_to_empty_path_becomes_slash() -> None:
    config = RewriteFilter(type="rewrite", regex="^/drop$", replace="")
    assert rewrite(config, b"/drop?x=1") == b"/?x=1"


def test_rewrite_does_not_change_the_client_view() -> None:
    ctx = make_ctx(b"/api/users?x=1")
    RewriteAction(RewriteFilter(type="rewrite", strip_prefix="/api")).on_request(ctx)
    assert ctx.path == "/api/users"
    assert ctx.query == "x=1"
    assert ctx.target == b"/api/users?x=1"


def test_rewrite_replacement_with_a_missing_group_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match=r"group \$2"):
        RewriteFilter(type="rewrite", regex="^/(.*)$", replace="/x/$2")


def test_rewrite_replacement_backslashes_and_double_dollar_are_literal() -> None:
    action = RewriteAction(RewriteFilter(type="rewrite", regex="^/(.*)$", replace="/files\\d/$1$$"))
    ctx = make_ctx(b"/abc")
    action.on_request(ctx)
    assert ctx.upstream_path == b"/files\\d/abc$"


# ---------------------------------------------------------------------------- redirect


def redirect(to: str, target: bytes, host: str = "shop.example", status: int = 302) -> Response:
    action = RedirectAction(RedirectFilter(type="redirect", to=to, status=status))  # type: ignore[arg-type]
    response = action.on_request(make_ctx(target, host=host))
    assert isinstance(response, Response)
    return response


def location(response: Response) -> bytes:
    values = [v for k, v in response.headers if k.lower() == b"location"]
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize(
    ("to", "target", "expected"),
    [
        ("https://$host$request_uri", b"/a/b?x=1&y=2", b"https://shop.example/a/b?x=1&y=2"),
        ("https://$host$request_uri", b"/a/b", b"https://shop.example/a/b"),
        ("https://new.example$path", b"/a/b?x=1", b"https://new.example/a/b"),
        ("https://new.example/search?$query", b"/s?q=abc", b"https://new.example/search?q=abc"),
        ("https://new.example/fixed", b"/anything?x=1", b"https://new.example/fixed"),
        ("/login?next=$path", b"/account", b"/login?next=/account"),
    ],
)
def test_redirect_location(to: str, target: bytes, expected: bytes) -> None:
    assert location(redirect(to, target)) == expected


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_status(status: int) -> None:
    response = redirect("https://x.example/", b"/", status=status)
    assert response.status == status
    assert response.body == b""


def test_redirect_default_status_and_phase() -> None:
    action = RedirectAction(RedirectFilter(type="redirect", to="/"))
    assert action.status == 302
    assert action.phase == Phase.ROUTE


def test_redirect_does_not_expand_variables_inside_request_values() -> None:
    assert location(redirect("https://new.example$path", b"/$host/$query?q=1")) == b"https://new.example/$host/$query"


# ---------------------------------------------------------------------------- respond


def test_respond_status_body_headers() -> None:
    action = RespondAction(
        RespondFilter(
            type="respond",
            status=503,
            body="down for maintenance\n",
            content_type="text/plain; charset=utf-8",
            headers={"Retry-After": "120", "X-Reason": "maintenance"},
        )
    )
    response = action.on_request(make_ctx())
    assert isinstance(response, Response)
    assert response.status == 503
    assert response.body == b"down for maintenance\n"
    assert response.headers == [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Retry-After", b"120"),
        (b"X-Reason", b"maintenance"),
    ]


def test_respond_defaults() -> None:
    response = RespondAction(RespondFilter(type="respond")).on_request(make_ctx())
    assert isinstance(response, Response)
    assert response.status == 200
    assert response.body == b""
    assert response.headers == [(b"Content-Type", b"text/plain; charset=utf-8")]


def test_respond_body_is_utf8() -> None:
    response = RespondAction(RespondFilter(type="respond", body="héllo ✓")).on_request(make_ctx())
    assert isinstance(response, Response)
    assert response.body == "héllo ✓".encode()


def test_respond_headers_are_fresh_per_request() -> None:
    action = RespondAction(RespondFilter(type="respond", headers={"X-A": "1"}))
    first = action.on_request(make_ctx())
    assert isinstance(first, Response)
    first.headers.append((b"X-Added-Later", b"1"))
    second = action.on_request(make_ctx())
    assert isinstance(second, Response)
    assert (b"X-Added-Later", b"1") not in second.headers


def test_registry_builds_each_action() -> None:
    services = Services()
    assert isinstance(build_filter(RewriteFilter(type="rewrite", strip_prefix="/a"), services), RewriteAction)
    assert isinstance(build_filter(RedirectFilter(type="redirect", to="/"), services), RedirectAction)
    assert isinstance(build_filter(RespondFilter(type="respond"), services), RespondAction)
