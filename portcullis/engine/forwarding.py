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
_RESPONSE_SKIP: Final = HOP_BY_HOP


def connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


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
    conn_value = ctx.header(b"connection")
    named = connection_tokens(conn_value) if conn_value else frozenset()
    rid_lower = request_id_header.lower()
    xff = xfp = xfh = fwd = None
    lines = [ctx.method.encode("latin-1"), b" ", ctx.upstream_path, b" HTTP/1.1\r\n"]
    for name, value in ctx.headers:
        lname = name.lower()
        if lname in drop or lname in named or lname == rid_lower:
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
    host = ctx.header(b"host") or ctx.host.encode()
    proto = ctx.scheme.encode()
    lines += (
        b"X-Forwarded-For: ",
        ip if xff is None else xff + b", " + ip,
        b"\r\n",
        b"X-Forwarded-Proto: ",
        xfp or proto,
        b"\r\n",
        b"X-Forwarded-Host: ",
        xfh or host,
        b"\r\n",
    )
    this_hop = b'for=%s;proto=%s;host="%s"' % (_node(ctx.client_ip).encode(), proto, host)
    lines += (b"Forwarded: ", this_hop if fwd is None else fwd + b", " + this_hop, b"\r\n")
    lines += (request_id_header, b": ", ctx.request_id.encode(), b"\r\n")
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    lines += (framing, b"\r\n")
    return b"".join(lines)


def response_headers(headers: Headers) -> tuple[Headers, int | None, bool]:
    """Strip hop-by-hop fields from an upstream response head.

    Returns (headers, content length or None, chunked)."""
    conn_value = None
    for name, value in headers:
        if name.lower() == b"connection":
            conn_value = value if conn_value is None else conn_value + b"," + value
    named = connection_tokens(conn_value) if conn_value else frozenset()
    out: Headers = []
    length: int | None = None
    chunked = False
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SKIP or lname in named:
            if lname == b"transfer-encoding":
                chunked = True
            continue
        if lname == b"content-length":
            length = int(value)  # the codec writes the framing itself
            continue
        out.append((name, value))
    return out, length, chunked
