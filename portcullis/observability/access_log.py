"""The access log: one JSON object (or a combined-format line) per request.

Lines are buffered and written at most every quarter second or 64 KiB, never one write
per request; SIGUSR1 reopens the file for logrotate.
"""

from __future__ import annotations

import json
import json.encoder
import time
from typing import TYPE_CHECKING, Any

from portcullis.observability.log_file import LogFile

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext


def _header(ctx: RequestContext, name: bytes) -> str:
    value = ctx.header(name)
    return value.decode("latin-1") if value is not None else ""


_quote = json.encoder.encode_basestring  # the C encoder: a JSON string literal, quotes included
_clock: list[Any] = [0, ""]


def _now() -> str:
    """The local time to the second, formatted once per second rather than once per line."""
    second = int(time.time())
    if second != _clock[0]:
        _clock[0], _clock[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
    text: str = _clock[1]
    return text


def _str(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def json_line(ctx: RequestContext, total: float) -> str:
    """One JSON object; assembled by hand from C-encoded strings (several times faster than
    json.dumps of a dict, and it runs once per request)."""
    upstream_time = "null" if ctx.upstream_time is None else repr(round(ctx.upstream_time, 6))
    error = ""
    if ctx.error is not None:
        error = ',"error":' + _quote(ctx.error.detail or ctx.error.kind.value)
    return (
        f'{{"time":"{_now()}","request_id":{_quote(ctx.request_id)},"client":{_quote(ctx.client_ip)},'
        f'"method":{_quote(ctx.method)},"host":{_quote(ctx.host)},"path":{_quote(ctx.path)},'
        f'"query":{_quote(ctx.query)},"protocol":"HTTP/{ctx.version}","status":{ctx.status},'
        f'"bytes_in":{ctx.bytes_in},"bytes_out":{ctx.bytes_out},'
        f'"route":{_str(ctx.route.name if ctx.route is not None else None)},"upstream_peer":{_str(ctx.peer)},'
        f'"upstream_time":{upstream_time},"total_time":{round(total, 6)!r},'
        f'"user_agent":{_quote(_header(ctx, b"user-agent"))},"decision":{_str(ctx.decision)}{error}}}\n'
    )


def combined_line(ctx: RequestContext, total: float) -> str:
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(int(time.time())))
    target = ctx.path + ("?" + ctx.query if ctx.query else "")
    referer = _header(ctx, b"referer") or "-"
    agent = _header(ctx, b"user-agent") or "-"
    return (
        f'{ctx.client_ip} - - [{when}] "{ctx.method} {target} HTTP/{ctx.version}" {ctx.status} '
        f'{ctx.bytes_out} "{referer}" "{agent}"\n'
    )


class AccessLog(LogFile):
    def __init__(self, path: str, fmt: str) -> None:
        super().__init__(path)
        self.format = combined_line if fmt == "combined" else json_line

    def write(self, ctx: RequestContext, total: float) -> None:
        self.write_line(self.format(ctx, total))
