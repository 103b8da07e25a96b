"""Forwarding rules: hop-by-hop removal, X-Forwarded-* / Forwarded, request id, framing."""

from __future__ import annotations

from portcullis.engine.context import RequestContext
from portcullis.engine.forwarding import (
    HOP_BY_HOP,
    connection_tokens,
    response_headers,
    upstream_request_fields,
    upstream_request_head,
)
from portcullis.engine.messages import Headers

RID = b"X-Request-Id"


def make_ctx(
    headers: Headers,
    client_ip: str = "203.0.113.7",
    method: str = "POST",
    target: bytes = b"/orders?x=1",
    scheme: str = "https",
) -> RequestContext:
    host_header = next((v for k, v in headers if k.lower() == b"host"), None)
    connection = None
    for name, value in headers:
        if name.lower() == b"connection":
            connection = value if connection is None else connection + b"," + value
    ctx = RequestContext(
        method=method,
        target=target,
        headers=headers,
        version="1.1",
        host=(host_header or b"fallback.example").decode().partition(":")[0],
        client_ip=client_ip,
        client_port=51000,
        scheme=scheme,
        listener="web",
        started=0.0,
        host_header=host_header,
        connection=connection,
    )
    ctx.request_id = "rid-0001"
    return ctx


def forward(
    ctx: RequestContext, trusted: bool = False, framing: bytes = b"", upgrade: bytes | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    head = upstream_request_head(ctx, trusted, RID, framing, upgrade)
    assert head.endswith(b"\r\n\r\n")
    request_line, _, rest = head[:-4].partition(b"\r\n")
    fields = []
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        assert sep, line
        fields.append((name, value))
    return request_line, fields


def values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in fields if k.lower() == name.lower()]


def test_request_line_uses_upstream_path_and_http11() -> None:
    ctx = make_ctx([(b"Host", b"shop.example")], method="PATCH")
    ctx.upstream_path = b"/rewritten?x=1"
    line, _ = forward(ctx)
    assert line == b"PATCH /rewritten?x=1 HTTP/1.1"


def test_end_to_end_headers_kept_in_order_with_case() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"Accept", b"*/*"),
        (b"X-Custom", b"1"),
        (b"cookie", b"a=b"),
        (b"X-Custom", b"2"),
    ]
    _, fields = forward(make_ctx(headers))
    assert fields[:5] == headers


def test_hop_by_hop_headers_removed() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Sum"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"X-Keep", b"yes"),
    ]
    _, fields = forward(make_ctx(headers))
    names = {k.lower() for k, _ in fields}
    assert not names & HOP_BY_HOP
    assert (b"X-Keep", b"yes") in fields


def test_headers_named_by_connection_removed() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"Connection", b"close, X-Secret"),
        (b"Connection", b"x-other"),
        (b"X-Secret", b"s3cr3t"),
        (b"x-SECRET", b"again"),
        (b"X-Other", b"o"),
        (b"X-Kept", b"k"),
    ]
    _, fields = forward(make_ctx(headers))
    assert values(fields, b"x-secret") == []
    assert values(fields, b"x-other") == []
    assert values(fields, b"x-kept") == [b"k"]
    assert values(fields, b"connection") == []


def test_connection_tokens() -> None:
    assert connection_tokens(None) == frozenset()
    assert connection_tokens(b"close") == frozenset()
    assert connection_tokens(b"Keep-Alive") == frozenset()
    assert connection_tokens(b"close, X-A ,x-b,,") == {b"x-a", b"x-b"}


def test_x_forwarded_for_replaced_for_untrusted_client() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"Forwarded", b"for=1.2.3.4"),
    ]
    _, fields = forward(make_ctx(headers), trusted=False)
    assert values(fields, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(fields, b"x-forwarded-proto") == [b"https"]
    assert values(fields, b"x-forwarded-host") == [b"shop.example"]
    assert values(fields, b"forwarded") == [b'for=203.0.113.7;proto=https;host="shop.example"']


def test_x_forwarded_for_appended_for_trusted_client() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"X-Forwarded-For", b"198.51.100.1"),
        (b"X-Forwarded-For", b"10.0.0.2, 10.0.0.3"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"www.shop.example"),
        (b"Forwarded", b"for=198.51.100.1;proto=http"),
    ]
    _, fields = forward(make_ctx(headers, client_ip="10.0.0.9"), trusted=True)
    assert values(fields, b"x-forwarded-for") == [b"198.51.100.1, 10.0.0.2, 10.0.0.3, 10.0.0.9"]
    assert values(fields, b"x-forwarded-proto") == [b"http"]
    assert values(fields, b"x-forwarded-host") == [b"www.shop.example"]
    assert values(fields, b"forwarded") == [
        b'for=198.51.100.1;proto=http, for=10.0.0.9;proto=https;host="shop.example"'
    ]


def test_trusted_client_without_forwarding_headers() -> None:
    _, fields = forward(make_ctx([(b"Host", b"shop.example")], scheme="http"), trusted=True)
    assert values(fields, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(fields, b"x-forwarded-proto") == [b"http"]


def test_forwarded_quotes_ipv6() -> None:
    _, fields = forward(make_ctx([(b"Host", b"shop.example")], client_ip="2001:db8::1"))
    assert values(fields, b"forwarded") == [b'for="[2001:db8::1]";proto=https;host="shop.example"']
    assert values(fields, b"x-forwarded-for") == [b"2001:db8::1"]


def test_host_falls_back_to_ctx_host() -> None:
    ctx = make_ctx([])  # HTTP/1.0 without Host
    ctx.host = "listener.example"
    _, fields = forward(ctx)
    assert values(fields, b"x-forwarded-host") == [b"listener.example"]
    # the upstream request is HTTP/1.1, which must carry a Host (RFC 9112 3.2)
    assert values(fields, b"host") == [b"listener.example"]


def forwarded_pairs(value: bytes) -> list[tuple[bytes, bytes]]:
    """RFC 7239 forwarded-pairs, honouring quoted strings and their backslash escapes."""
    pairs, token, quoted, escaped = [], b"", False, False
    for byte in value:
        char = bytes([byte])
        if escaped:
            token += char
            escaped = False
        elif quoted and char == b"\\":
            escaped = True
        elif char == b'"':
            quoted = not quoted
        elif not quoted and char in b";,":
            pairs.append(token)
            token = b""
        else:
            token += char
    pairs.append(token)
    out = []
    for pair in pairs:
        key, _, val = pair.strip().partition(b"=")
        out.append((key.lower(), val))
    return out


def test_forwarded_pairs_parser() -> None:
    assert forwarded_pairs(b'for=1.2.3.4;proto=https;host="a;b\\"c", for="[::1]"') == [
        (b"for", b"1.2.3.4"), (b"proto", b"https"), (b"host", b'a;b"c'), (b"for", b"[::1]"),
    ]  # fmt: skip


def test_forwarded_host_cannot_inject_parameters() -> None:
    _, fields = forward(make_ctx([(b"Host", b'a";for=6.6.6.6;by="x')]))
    (forwarded,) = values(fields, b"forwarded")
    assert [v for k, v in forwarded_pairs(forwarded) if k == b"for"] == [b"203.0.113.7"]


def test_request_id_set_and_client_value_replaced() -> None:
    headers = [(b"Host", b"shop.example"), (b"x-request-id", b"client-chosen")]
    for trusted in (False, True):
        _, fields = forward(make_ctx(headers), trusted=trusted)
        assert values(fields, b"x-request-id") == [b"rid-0001"]
        assert (RID, b"rid-0001") in fields


def test_content_length_and_expect_dropped_and_framing_added() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"Content-Length", b"999"),
        (b"Expect", b"100-continue"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    _, fields = forward(make_ctx(headers), framing=b"Content-Length: 12\r\n")
    assert values(fields, b"content-length") == [b"12"]
    assert values(fields, b"expect") == []
    assert values(fields, b"transfer-encoding") == []
    assert fields[-1] == (b"Content-Length", b"12")

    _, fields = forward(make_ctx(headers), framing=b"Transfer-Encoding: chunked\r\n")
    assert values(fields, b"content-length") == []
    assert values(fields, b"transfer-encoding") == [b"chunked"]

    head = upstream_request_head(make_ctx(headers), False, RID, b"", None)
    assert b"content-length" not in head.lower()
    assert head.endswith(b"\r\n\r\n") and not head.endswith(b"\r\n\r\n\r\n")


def test_upgrade_lines_added() -> None:
    headers = [(b"Host", b"shop.example"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    _, fields = forward(make_ctx(headers, method="GET", target=b"/ws"), upgrade=b"websocket")
    assert values(fields, b"connection") == [b"upgrade"]
    assert values(fields, b"upgrade") == [b"websocket"]


# ---------------------------------------------------------------------------- response headers


def test_response_headers_strip_hop_by_hop_and_read_framing() -> None:
    raw = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Hop", b"h"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Upgrade", b"h2c"),
        (b"Trailer", b"X-Sum"),
        (b"Proxy-Connection", b"close"),
    ]
    head = response_headers(raw, b"x-request-id")
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    assert head.chunked is True
    assert head.length is None
    assert head.has_request_id is False


def test_response_headers_content_length() -> None:
    head = response_headers(
        [(b"content-length", b"42"), (b"Server", b"x"), (b"X-Request-Id", b"up-1")], b"x-request-id"
    )
    assert head.length == 42
    assert head.chunked is False
    assert head.headers == [(b"Server", b"x"), (b"X-Request-Id", b"up-1")]
    assert head.has_request_id is True


def test_response_headers_no_framing() -> None:
    head = response_headers([(b"Server", b"x")], b"x-request-id")
    assert head.length is None
    assert head.chunked is False
    assert head.headers == [(b"Server", b"x")]


def test_response_headers_input_not_modified() -> None:
    raw = [(b"Connection", b"close"), (b"Server", b"x")]
    response_headers(raw, b"x-request-id")
    assert raw == [(b"Connection", b"close"), (b"Server", b"x")]


def test_framing_and_routing_fields_are_not_passed_on_in_trailers() -> None:
    from portcullis.engine.forwarding import forwardable_trailers

    trailers = [(b"X-Checksum", b"abc"), (b"Content-Length", b"5"), (b"Host", b"evil"), (b"Transfer-Encoding", b"x")]
    assert forwardable_trailers(trailers) == [(b"X-Checksum", b"abc")]
    assert forwardable_trailers(None) is None


# --------------------------------------------------------------------------- HTTP/2 peers


def test_http2_fields_follow_the_same_rules_as_the_http1_head() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"Connection", b"close, X-Secret"),
        (b"X-Secret", b"s"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers, deflate"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"12"),
        (b"Expect", b"100-continue"),
        (b"X-Forwarded-For", b"198.51.100.1"),
        (b"X-Request-Id", b"client-id"),
        (b"Content-Type", b"application/grpc"),
    ]
    ctx = make_ctx(headers)
    ctx.upstream_path = b"/pkg.Svc/Call"
    fields = upstream_request_fields(ctx, False, RID.lower(), b"http", 12)
    _, h1 = forward(make_ctx(headers))
    assert fields[:4] == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"shop.example"),
                          (b":path", b"/pkg.Svc/Call")]
    regular = fields[4:]
    assert all(name == name.lower() and not name.startswith(b":") for name, _ in regular)
    # the same fields as HTTP/1.1, less Host (it is :authority), plus te: trailers and the length
    expected = [(k.lower(), v) for k, v in h1 if k.lower() != b"host"]
    assert sorted(regular) == sorted([*expected, (b"te", b"trailers"), (b"content-length", b"12")])
    assert values(regular, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(regular, b"x-request-id") == [b"rid-0001"]
    assert values(regular, b"x-secret") == [] and values(regular, b"expect") == []


def test_http2_fields_for_a_trusted_client_and_an_edited_host() -> None:
    headers = [(b"host", b"edited.example"), (b"x-forwarded-for", b"198.51.100.1"), (b"forwarded", b"for=x")]
    ctx = make_ctx(headers, method="GET")
    ctx.host_header = b"original.example"
    fields = upstream_request_fields(ctx, True, RID.lower(), b"https", None)
    assert (b":authority", b"edited.example") in fields and (b":scheme", b"https") in fields
    assert values(fields, b"x-forwarded-for") == [b"198.51.100.1, 203.0.113.7"]
    assert values(fields, b"forwarded")[0].startswith(b"for=x, for=203.0.113.7")
    assert values(fields, b"content-length") == [] and values(fields, b"host") == []
