"""Header rules for forwarding: hop-by-hop removal and the X-Forwarded-* / Forwarded family."""

from __future__ import annotations

from typing import Final

from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Headers

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
_KEEP, _DROP, _XFF, _XFP, _XFH, _FWD, _TE, _CL, _CONN, _RID = range(10)
# one table per request id header name (it is configurable), per direction
_REQUEST_CODES: dict[bytes, dict[bytes, int]] = {}
_RESPONSE_CODES: dict[bytes, dict[bytes, int]] = {}
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
    named = connection_tokens(conn) if conn is not None else _NO_TOKENS
    codes = _REQUEST_CODES.get(rid_lower)
    if codes is None:
        codes = _REQUEST_CODES[rid_lower] = {}
    xff = xfp = xfh = fwd = None
    lines = [ctx.method.encode("latin-1"), b" ", ctx.upstream_path, b" HTTP/1.1\r\n"]
    if ctx.host_header is None and ctx.header(b"host") is None:
        # an HTTP/1.0 client may send no Host, but an HTTP/1.1 request must have one (RFC 9112 3.2)
        lines += (b"Host: ", ctx.host.encode(), b"\r\n")
    for name, value in ctx.headers:
        code = codes.get(name)
        if code is None:
            code = _code(name, _REQUEST_SKIP, rid_lower, codes)
        if code == _KEEP:
            if not named or name.lower() not in named:
                lines += (name, b": ", value, b"\r\n")
            continue
        if trusted:
            if code == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif code == _XFP:
                xfp = value
            elif code == _XFH:
                xfh = value
            elif code == _FWD:
                fwd = value if fwd is None else fwd + b", " + value
    ip, node = _address(ctx.client_ip)
    host = ctx.host_header or ctx.host.encode()
    proto = b"https" if ctx.scheme == "https" else b"http"
    if b'"' in host or b"\\" in host:
        host = host.replace(b"\\", b"\\\\").replace(b'"', b'\\"')  # RFC 7230 quoted-string
    this_hop = b"for=" + node + b";proto=" + proto + b';host="' + host + b'"'
    lines += (
        b"X-Forwarded-For: ", ip if xff is None else xff + b", " + ip, b"\r\n",
        b"X-Forwarded-Proto: ", xfp or proto, b"\r\n",
        b"X-Forwarded-Host: ", xfh or ctx.host_header or ctx.host.encode(), b"\r\n",
        b"Forwarded: ", this_hop if fwd is None else fwd + b", " + this_hop, b"\r\n",
        request_id_header, b": ", ctx.request_id.encode(), b"\r\n",
    )  # fmt: skip
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    lines += (framing, b"\r\n")
    return b"".join(lines)


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
    codes = _RESPONSE_CODES.get(request_id_lower)
    if codes is None:
        codes = _RESPONSE_CODES[request_id_lower] = {}
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
