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


def _node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def upstream_request_head(
    ctx: RequestContext,
    trusted: bool,
    request_id_header: bytes,
    framing: bytes,
    upgrade: bytes | None,
) -> bytes:
    """The request head sent to the peer. `framing` is the body framing line(s) to add."""
    drop = _REQUEST_SKIP
    named = connection_tokens(ctx.connection)
    rid_lower = request_id_header.lower()
    xff = xfp = xfh = fwd = None
    lines = [ctx.method.encode("latin-1"), b" ", ctx.upstream_path, b" HTTP/1.1\r\n"]
    if ctx.host_header is None and ctx.header(b"host") is None:
        # an HTTP/1.0 client may send no Host, but an HTTP/1.1 request must have one (RFC 9112 3.2)
        lines += (b"Host: ", ctx.host.encode(), b"\r\n")
    for name, value in ctx.headers:
        lname = name.lower()
        if lname in drop or lname == rid_lower or (named and lname in named):
            if trusted:
                if lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"x-forwarded-proto":
                    xfp = value
                elif lname == b"x-forwarded-host":
                    xfh = value
                elif lname == b"forwarded":
                    fwd = value if fwd is None else fwd + b", " + value
            continue
        lines += (name, b": ", value, b"\r\n")
    ip = ctx.client_ip.encode()
    host = ctx.host_header or ctx.host.encode()
    proto = ctx.scheme.encode()
    lines += (
        b"X-Forwarded-For: ", ip if xff is None else xff + b", " + ip, b"\r\n",
        b"X-Forwarded-Proto: ", xfp or proto, b"\r\n",
        b"X-Forwarded-Host: ", xfh or host, b"\r\n",
    )  # fmt: skip
    quoted_host = host.replace(b"\\", b"\\\\").replace(b'"', b'\\"')  # RFC 7230 quoted-string
    this_hop = b'for=%s;proto=%s;host="%s"' % (_node(ctx.client_ip).encode(), proto, quoted_host)
    lines += (b"Forwarded: ", this_hop if fwd is None else fwd + b", " + this_hop, b"\r\n")
    lines += (request_id_header, b": ", ctx.request_id.encode(), b"\r\n")
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
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SKIP:
            if lname == b"transfer-encoding":
                chunked = True
            elif lname == b"content-length":
                length = int(value)
            elif lname == b"connection":
                conn_value = value if conn_value is None else conn_value + b"," + value
            continue
        if lname == request_id_lower:
            has_rid = True
        out.append((name, value))
    named = connection_tokens(conn_value)
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    return UpstreamHead(out, length, chunked, has_rid)
