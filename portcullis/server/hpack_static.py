"""A fast HPACK encoder for response heads that uses only the static table (RFC 7541).

`hpack.Encoder` searches and updates the dynamic table and Huffman-codes every literal, which
made it the largest cost of an HTTP/2 response. This one emits indexed fields for exact static
matches and otherwise literals *without indexing* (name by static index when there is one), raw
(no Huffman). It never references the dynamic table, so it is valid whatever table size the
client announces (`header_table_size` is accepted and ignored). Response heads are a few
hundred bytes; the compression given up is small next to the CPU saved.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault((_name, _value), _i)
    _STATIC_NAME.setdefault(_name, _i)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix; `first` holds the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_INDEXED = {index: _integer(index, 7, 0x80) for index in range(1, len(HeaderTable.STATIC_TABLE) + 1)}
_NAME_REF = {index: _integer(index, 4, 0x00) for index in range(1, len(HeaderTable.STATIC_TABLE) + 1)}


def _field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return _INDEXED[index]
    index = _STATIC_NAME.get(name)
    # a literal without indexing, its name by static index when there is one
    head = _NAME_REF[index] if index is not None else b"\x00" + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0) + value


# encoded fields by (name, value): the same few fields start most responses (server, content-type ...)
_CACHE_LIMIT = 512
_CACHE_FIELD_BYTES = 160
_cache: dict[tuple[bytes, bytes], bytes] = {}


class StaticEncoder:
    """Drop-in for `hpack.Encoder` as `h2` uses it: `encode(headers)` and `header_table_size`.
    `uncached` names (the request id: unique per response) are not remembered; nor is `set-cookie`."""

    __slots__ = ("header_table_size", "uncached")

    def __init__(self, *uncached: bytes) -> None:
        self.header_table_size = 4096
        self.uncached = frozenset((b"set-cookie", *uncached))

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = _cache
        out = []
        for field in headers:  # h2 has made them bytes
            code = cache.get(field)
            if code is None:
                name, value = field
                code = _field(name, value)
                if len(name) + len(value) <= _CACHE_FIELD_BYTES and name not in self.uncached:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()  # (a flood of distinct fields only costs their encoding)
                    cache[field] = code
            out.append(code)
        return b"".join(out)
