"""Header rules for forwarding: hop-by-hop removal and the X-Forwarded-* / Forwarded family."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Headers

if TYPE_CHECKING:
    from portcullis.engine.downstream import Downstream

# RFC 9110 7.6.1: never forwarded, whatever Connection names
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})
# request headers the engine writes itself
_REQUEST_SKIP: Final = HOP_BY_HOP | _FORWARDED | {b"content-length", b"expect"}
_RESPONSE_SKIP: Final = HOP_BY_HOP | {b"content-length"}


_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The field names a Connection header marks as hop-by-hop (beyond the fixed set)."""
    if value is None:
        return _NO_TOKENS
    lowered = value.lower()
    if lowered in _PLAIN_CONNECTION:
        return _NO_TOKENS
    return frozenset(t.strip() for t in lowered.split(b",") if t.strip()) - HOP_BY_HOP - {b"close"}


# what a header name means to the forwarder, by its bytes as received (names repeat from
# request to request, so one dict lookup replaces lower-casing and set tests)
# (_XFF to _FWD, the forwarding family, are consecutive: a range test finds them)
_KEEP, _DROP, _XFF, _XFP, _XFH, _FWD, _TE, _CL, _CONN, _RID = range(10)
# one table per request id header name (it is configurable), per direction
_REQUEST_CODES: defaultdict[bytes, dict[bytes, int]] = defaultdict(dict)
_RESPONSE_CODES: defaultdict[bytes, dict[bytes, int]] = defaultdict(dict)
_CODES_MAX = 2048
_BY_NAME: Final = {
    b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP, b"x-forwarded-host": _XFH, b"forwarded": _FWD,
    b"transfer-encoding": _TE, b"content-length": _CL, b"connection": _CONN,
}  # fmt: skip


def _code(name: bytes, skip: frozenset[bytes], request_id_lower: bytes, cache: dict[bytes, int]) -> int:
    lname = name.lower()
    if lname == request_id_lower:
        code = _RID
    elif lname in skip:
        code = _BY_NAME.get(lname, _DROP)
    else:
        code = _KEEP
    if len(cache) < _CODES_MAX:
        cache[name] = code
    return code


_ADDRESSES: dict[str, tuple[bytes, bytes]] = {}


def _address(ip: str) -> tuple[bytes, bytes]:
    """The client address as X-Forwarded-For and as a Forwarded node (IPv6 quoted), cached."""
    pair = _ADDRESSES.get(ip)
    if pair is None:
        node = f'"[{ip}]"' if ":" in ip else ip
        pair = (ip.encode(), node.encode())
        if len(_ADDRESSES) > 4096:
            _ADDRESSES.clear()
        _ADDRESSES[ip] = pair
    return pair


def _forwarding_values(
    ip: str, host: bytes, proto: bytes, xff: bytes | None, xfp: bytes | None, xfh: bytes | None, fwd: bytes | None
) -> tuple[bytes, bytes, bytes, bytes]:
    """The values of X-Forwarded-For/-Proto/-Host and Forwarded, extending what a trusted proxy sent."""
    address, node = _address(ip)
    quoted = host
    if b'"' in quoted or b"\\" in quoted:
        quoted = quoted.replace(b"\\", b"\\\\").replace(b'"', b'\\"')  # RFC 7230 quoted-string
    this_hop = b"for=" + node + b";proto=" + proto + b';host="' + quoted + b'"'
    return (
        address if xff is None else xff + b", " + address,
        xfp or proto,
        xfh or host,
        this_hop if fwd is None else fwd + b", " + this_hop,
    )


def _forwarding_fields(
    ip: str, host: bytes, proto: bytes, xff: bytes | None, xfp: bytes | None, xfh: bytes | None, fwd: bytes | None
) -> bytes:
    """The forwarding fields as HTTP/1.1 header lines."""
    for_, proto_, host_, forwarded = _forwarding_values(ip, host, proto, xff, xfp, xfh, fwd)
    return b"".join((
        b"X-Forwarded-For: ", for_, b"\r\nX-Forwarded-Proto: ", proto_, b"\r\nX-Forwarded-Host: ", host_,
        b"\r\nForwarded: ", forwarded, b"\r\n",
    ))  # fmt: skip


# the forwarding fields for a client address, Host and scheme when no trusted proxy sent any:
# they repeat on every request of a connection
_FORWARDING: dict[tuple[str, bytes, str], bytes] = {}
_FORWARDING_MAX = 4096
_Built = TypeVar("_Built")


def _forwarding(
    cache: dict[tuple[str, bytes, str], _Built],
    build: Callable[[str, bytes, bytes, bytes | None, bytes | None, bytes | None, bytes | None], _Built],
    ctx: RequestContext,
    host: bytes,
    incoming: list[tuple[int, bytes]] | None,
) -> _Built:
    """`build`'s forwarding fields for this request, from `cache` when no trusted proxy sent any
    (`incoming`: the trusted X-Forwarded-*/Forwarded fields, by code, in the order received)."""
    proto = b"https" if ctx.scheme == "https" else b"http"
    if incoming:
        xff = xfp = xfh = fwd = None
        for code, value in incoming:
            if code == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif code == _XFP:
                xfp = value
            elif code == _XFH:
                xfh = value
            else:
                fwd = value if fwd is None else fwd + b", " + value
        return build(ctx.client_ip, host, proto, xff, xfp, xfh, fwd)
    key = (ctx.client_ip, host, ctx.scheme)
    built = cache.get(key)
    if built is None:
        built = build(ctx.client_ip, host, proto, None, None, None, None)
        if len(cache) >= _FORWARDING_MAX:
            cache.clear()
        cache[key] = built
    return built
_METHODS: dict[str, bytes] = {}


def upstream_request_head(
    ctx: RequestContext,
    trusted: bool,
    request_id_header: bytes,
    framing: bytes,
    upgrade: bytes | None,
    request_id_lower: bytes | None = None,
) -> bytes:
    """The request head sent to the peer. `framing` is the body framing line(s) to add."""
    rid_lower = request_id_lower or request_id_header.lower()
    conn = ctx.connection
    # (the usual "close" and "keep-alive" need no call)
    named = _NO_TOKENS if conn is None or conn in _PLAIN_CONNECTION else connection_tokens(conn)
    codes = _REQUEST_CODES[rid_lower]
    incoming: list[tuple[int, bytes]] | None = None  # forwarding fields a trusted proxy sent
    method = _METHODS.get(ctx.method)
    if method is None:
        method = ctx.method.encode("latin-1") + b" "
        if len(_METHODS) < 64:
            _METHODS[ctx.method] = method
    lines = [method, ctx.upstream_path, b" HTTP/1.1\r\n"]
    host = ctx.host_header
    if host is None:
        host = ctx.host.encode()
        if ctx.header(b"host") is None:
            # an HTTP/1.0 client may send no Host, but an HTTP/1.1 request must have one (RFC 9112 3.2)
            lines += (b"Host: ", host, b"\r\n")
    for name, value in ctx.headers:
        code = codes.get(name)
        if code is None:
            code = _code(name, _REQUEST_SKIP, rid_lower, codes)
        if code == _KEEP:
            if not named or name.lower() not in named:
                lines += (name, b": ", value, b"\r\n")
        elif trusted and _XFF <= code <= _FWD:
            if incoming is None:
                incoming = []
            incoming.append((code, value))
    # the memo looked up here first: one call less on the usual path
    fields = _FORWARDING.get((ctx.client_ip, host, ctx.scheme)) if incoming is None else None
    if fields is None:
        fields = _forwarding(_FORWARDING, _forwarding_fields, ctx, host, incoming)
    lines += (fields, request_id_header, b": ", ctx.request_id.encode(), b"\r\n")
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    lines += (framing, b"\r\n")
    return b"".join(lines)


_H2_FORWARDING: dict[tuple[str, bytes, str], tuple[bytes, bytes, bytes, bytes]] = {}


def upstream_request_fields(
    ctx: RequestContext, trusted: bool, request_id_lower: bytes, scheme: bytes, length: int | None
) -> Headers:
    """The request for an HTTP/2 peer: pseudo-header fields, then the fields `upstream_request_head`
    would send (the same hop-by-hop removal and forwarding fields), lower-case, with `te: trailers`
    (this proxy takes trailers: gRPC needs them) and the Content-Length of a body that has one."""
    conn = ctx.connection
    named = connection_tokens(conn) if conn is not None else _NO_TOKENS
    codes = _REQUEST_CODES[request_id_lower]
    incoming: list[tuple[int, bytes]] | None = None  # forwarding fields a trusted proxy sent
    authority: bytes | None = None
    fields: Headers = []
    for name, value in ctx.headers:
        code = codes.get(name)
        if code is None:
            code = _code(name, _REQUEST_SKIP, request_id_lower, codes)
        if code == _KEEP:
            lname = name.lower()
            if lname == b"host":
                authority = authority or value  # HTTP/2 carries it as :authority (a filter may have set it)
            elif not named or lname not in named:
                fields.append((lname, value))
        elif trusted and _XFF <= code <= _FWD:
            if incoming is None:
                incoming = []
            incoming.append((code, value))
    host = ctx.host_header or ctx.host.encode()
    values = _forwarding(_H2_FORWARDING, _forwarding_values, ctx, host, incoming)
    out: Headers = [
        (b":method", ctx.method.encode("latin-1")), (b":scheme", scheme),
        (b":authority", authority or host), (b":path", ctx.upstream_path),
        *fields,
        (b"x-forwarded-for", values[0]), (b"x-forwarded-proto", values[1]),
        (b"x-forwarded-host", values[2]), (b"forwarded", values[3]),
        (request_id_lower, ctx.request_id.encode()), (b"te", b"trailers"),
    ]  # fmt: skip
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    return out


class UpstreamHead:
    """An upstream response head with hop-by-hop fields removed and its framing read out."""

    __slots__ = ("chunked", "has_request_id", "headers", "length")

    def __init__(self, headers: Headers, length: int | None, chunked: bool, has_request_id: bool) -> None:
        self.headers = headers
        self.length = length
        self.chunked = chunked
        self.has_request_id = has_request_id


def response_headers(headers: Headers, request_id_lower: bytes) -> UpstreamHead:
    """Strip hop-by-hop fields (and Content-Length, which the codec writes) in one pass."""
    out: Headers = []
    length: int | None = None
    chunked = has_rid = False
    conn_value: bytes | None = None
    codes = _RESPONSE_CODES[request_id_lower]
    for name, value in headers:
        code = codes.get(name)
        if code is None:
            code = _code(name, _RESPONSE_SKIP, request_id_lower, codes)
        if code == _KEEP:
            out.append((name, value))
        elif code == _RID:
            has_rid = True
            out.append((name, value))
        elif code == _TE:
            chunked = True
        elif code == _CL:
            length = int(value)
        elif code == _CONN:
            conn_value = value if conn_value is None else conn_value + b"," + value
    if conn_value is not None:
        named = connection_tokens(conn_value)
        if named:
            out = [(k, v) for k, v in out if k.lower() not in named]
    return UpstreamHead(out, length, chunked, has_rid)


# flags of `forward_response_fields`
CHUNKED: Final = 1
HAS_REQUEST_ID: Final = 2
NAMES_MORE_FIELDS: Final = 4
"""The peer's Connection header names fields beyond the fixed hop-by-hop set: use `response_headers`."""


def forward_response_fields(headers: Headers, request_id_lower: bytes, lines: list[bytes]) -> tuple[int | None, int]:
    """The single-pass form of `response_headers` for HTTP/1.1 clients: the end-to-end fields are
    appended to `lines` as wire bytes. Returns the Content-Length and the flags above."""
    length: int | None = None
    flags = 0
    codes = _RESPONSE_CODES[request_id_lower]
    for name, value in headers:
        code = codes.get(name)
        if code is None:
            code = _code(name, _RESPONSE_SKIP, request_id_lower, codes)
        if code == _KEEP:
            lines += (name, b": ", value, b"\r\n")
        elif code == _CL:
            length = int(value)
        elif code == _CONN:
            if value.lower() not in _PLAIN_CONNECTION:
                flags |= NAMES_MORE_FIELDS
        elif code == _TE:
            flags |= CHUNKED
        elif code == _RID:
            flags |= HAS_REQUEST_ID
            lines += (name, b": ", value, b"\r\n")
    return length, flags


def forward_head_fields(
    ds: Downstream, status: int, headers: Headers, no_body: bool, request_id: str, request_id_header: bytes
) -> bool:
    """`Downstream.forward_head` through `response_headers` and `send_head`, for any codec."""
    upstream = response_headers(headers, request_id_header.lower())
    fields = upstream.headers
    if not upstream.has_request_id and request_id:
        fields.append((request_id_header, request_id.encode()))
    ds.send_head(status, fields, upstream.length, no_body, False)
    return upstream.length is None and not upstream.chunked and not no_body


# RFC 9110 6.5.1: fields about framing, routing or the connection have no place in a trailer
_NOT_IN_TRAILERS: Final = HOP_BY_HOP | {
    b"content-length", b"content-encoding", b"content-type", b"content-range", b"host", b"expect",
    b"authorization", b"set-cookie", b"cookie", b"cache-control", b"max-forwards", b"range",
}  # fmt: skip


def forwardable_trailers(trailers: Headers | None) -> Headers | None:
    """The trailer fields that may be passed on."""
    if not trailers:
        return trailers
    return [(n, v) for n, v in trailers if n.lower() not in _NOT_IN_TRAILERS]
