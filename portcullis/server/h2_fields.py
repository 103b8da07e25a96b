"""Request header blocks of HTTP/2 clients: checked in one pass, and decoded once when repeated.

`h2` can validate received header blocks itself, but it does so through a chain of generators
that loop over every byte in Python, and makes any malformed request a connection error. The
connection turns that off (`validate_inbound_headers=False`) and calls `request_fields` instead,
which applies the same rules of RFC 9113 8.2 and 8.3 (and the stricter ones an HTTP/1.1 upstream
needs) with C-level bytes operations, while it extracts what the exchange needs anyway. A
malformed request is a stream error (RST_STREAM PROTOCOL_ERROR), as RFC 9113 8.1.1 asks.

`CachingDecoder` is hpack's decoder that remembers the blocks which left its dynamic table as it
was: a client repeating a request sends the very same bytes (every field indexed), so the same
table gives the same fields. Limits (the decoded list size) were enforced when it was decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h2.errors
import hpack

from portcullis.engine.messages import Headers

MALFORMED = h2.errors.ErrorCodes.PROTOCOL_ERROR
REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM

# field names: lower-case tokens only (RFC 9113 8.2.1 forbids upper case; an HTTP/1.1 field name is a token)
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_METHOD_CHARS = _NAME_CHARS + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TARGET_CHARS = bytes(range(0x21, 0x7F))  # a request target: visible ASCII, no space
# RFC 9113 8.2.1: no NUL, CR or LF anywhere in a value, no space or tab at either end
_CTL = re.compile(rb"[\x00\r\n]")
_WS = (0x20, 0x09)
# RFC 9113 8.2.2: connection-specific fields make a request malformed
_CONNECTION_SPECIFIC = (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")

_METHOD, _SCHEME, _PATH, _AUTHORITY = 1, 2, 3, 4
_PSEUDO = {b":method": _METHOD, b":scheme": _SCHEME, b":path": _PATH, b":authority": _AUTHORITY}
_COOKIE, _HOST, _LENGTH, _TE, _REFUSE, _RID = 1, 2, 3, 4, 5, 6
# fields seen valid are not checked again: clients repeat most of theirs (bounded, one set per process)
_KNOWN_FIELDS = 1024
_KNOWN_FIELD_BYTES = 256
_good_fields: set[tuple[bytes, bytes]] = set()


@dataclass(slots=True)
class RequestFields:
    method: bytes
    path: bytes
    authority: bytes
    headers: Headers
    """The regular fields in order, cookies joined into one, `host` added from `:authority`."""
    length: int | None
    request_id: bytes | None


def _value_ok(value: bytes) -> bool:
    return not value or not (value[0] in _WS or value[-1] in _WS or _CTL.search(value))


def _field_ok(field: tuple[bytes, bytes], pseudo: bool) -> bool:
    """A valid value, and a lower-case token name unless `pseudo` (its name is looked up instead)."""
    if field in _good_fields:
        return True
    name, value = field
    if not _value_ok(value) or not (pseudo or (name and not name.translate(None, _NAME_CHARS))):
        return False
    if len(name) + len(value) <= _KNOWN_FIELD_BYTES:
        if len(_good_fields) >= _KNOWN_FIELDS:
            _good_fields.clear()
        _good_fields.add(field)
    return True


def request_fields(block: Iterable[tuple[bytes, bytes]], rid_header: bytes) -> RequestFields | h2.errors.ErrorCodes:
    """The request in a decoded header block, or the error code to reset its stream with."""
    pseudo: dict[int, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    host: bytes | None = None
    length: int | None = None
    request_id: bytes | None = None
    special = _special(rid_header)
    for field in block:
        name, value = field
        if name[:1] == b":":
            code = _PSEUDO.get(name)
            # unknown (:status, :protocol), repeated, or after a regular field: RFC 9113 8.3
            if code is None or code in pseudo or headers or cookies or not _field_ok(field, True):
                return MALFORMED
            pseudo[code] = value
            continue
        if not _field_ok(field, False):
            return MALFORMED
        kind = special.get(name)
        if kind is not None:
            if kind == _COOKIE:
                cookies.append(value)
                continue
            if kind == _HOST:
                if host is not None:
                    return MALFORMED
                host = value
            elif kind == _LENGTH:
                if not value.isdigit() or (length is not None and int(value) != length):
                    return MALFORMED
                length = int(value)
            elif kind == _TE:
                if value.lower() != b"trailers":
                    return MALFORMED
            elif kind == _REFUSE:
                return MALFORMED
            else:
                request_id = value
        headers.append((name, value))
    method = pseudo.get(_METHOD, b"")
    if method == b"CONNECT":
        return REFUSED  # no tunnels over HTTP/2 (nor extended CONNECT)
    path, authority = pseudo.get(_PATH, b""), pseudo.get(_AUTHORITY)
    if (
        not method
        or not path
        or _SCHEME not in pseudo
        or method.translate(None, _METHOD_CHARS)
        or path.translate(None, _TARGET_CHARS)
        or (authority is None and host is None)
        or (authority is not None and host is not None and authority != host)
    ):
        return MALFORMED
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))  # RFC 9113 8.2.3
    if authority and host is None:
        headers.append((b"host", authority))
    return RequestFields(method, path, authority or host or b"", headers, length, request_id)


def trailer_fields(block: Iterable[tuple[bytes, bytes]]) -> Headers | None:
    """The fields of a request's trailer block, or None when it is malformed (a pseudo-header,
    a connection-specific field, a name or value an HTTP/1.1 trailer cannot carry)."""
    out: Headers = []
    for field in block:
        name, value = field
        if name[:1] == b":" or not _field_ok(field, False) or name in _CONNECTION_SPECIFIC:
            return None
        if name == b"te" and value.lower() != b"trailers":
            return None
        out.append((name, value))
    return out


_SPECIALS: dict[bytes, dict[bytes, int]] = {}


def _special(rid_header: bytes) -> dict[bytes, int]:
    """The fields `request_fields` looks at, by name (per request-id header name: one or two per process)."""
    found = _SPECIALS.get(rid_header)
    if found is None:
        found = {rid_header: _RID, b"cookie": _COOKIE, b"host": _HOST, b"content-length": _LENGTH, b"te": _TE}
        found.update(dict.fromkeys(_CONNECTION_SPECIFIC, _REFUSE))
        _SPECIALS[rid_header] = found
    return found


class CachingDecoder(hpack.Decoder):
    """hpack's decoder; a block whose decoding changed nothing in the dynamic table is remembered,
    and the same bytes against the same table are not decoded again."""

    MAX_BLOCKS = 16
    MAX_BLOCK_BYTES = 1024
    MAX_FIELDS_BYTES = 4096
    """Decoded size of a block kept (a small block may expand through the table: not those)."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[bytes, list[Any]] = {}
        # (an hpack without the table attributes read here decodes every block)
        self._enabled = hasattr(self.header_table, "dynamic_entries") and hasattr(self.header_table, "maxsize")
        self._state: tuple[object, int, int, int, int] = self._table_state() if self._enabled else (None, 0, 0, 0, 0)

    def _table_state(self) -> tuple[object, int, int, int, int]:
        # an insertion puts a new entry first, eviction shortens the table, an update changes its size;
        # the limits decoding checks are part of the state too
        entries = self.header_table.dynamic_entries
        head = entries[0] if entries else None
        return head, len(entries), self.header_table.maxsize, self.max_header_list_size, self.max_allowed_table_size

    def _same_table(self) -> bool:
        head, size, maxsize, limit, allowed = self._state
        entries = self.header_table.dynamic_entries
        return (
            (entries[0] if entries else None) is head
            and len(entries) == size
            and self.header_table.maxsize == maxsize
            and self.max_header_list_size == limit
            and self.max_allowed_table_size == allowed
        )

    def decode(self, data: bytes, raw: bool = False) -> Iterable[hpack.HeaderTuple]:
        if not raw or not self._enabled:
            return super().decode(data, raw)
        if not self._same_table():
            self._blocks.clear()
            self._state = self._table_state()
        found = self._blocks.get(data)
        if found is not None:
            return list(found)
        headers = list(super().decode(data, raw))
        if not self._same_table():
            self._blocks.clear()
            self._state = self._table_state()
        elif (
            len(data) <= self.MAX_BLOCK_BYTES
            and len(self._blocks) < self.MAX_BLOCKS
            and sum(len(name) + len(value) for name, value in headers) <= self.MAX_FIELDS_BYTES
        ):
            self._blocks[bytes(data)] = headers
            return list(headers)
        return headers
