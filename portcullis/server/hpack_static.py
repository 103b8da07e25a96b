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


class StaticEncoder:
    """Drop-in for `hpack.Encoder` as `h2` uses it: `encode(headers)` and `header_table_size`."""

    __slots__ = ("header_table_size",)

    def __init__(self) -> None:
        self.header_table_size = 4096

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        out = []
        full, by_name, indexed, name_ref = _STATIC_FULL, _STATIC_NAME, _INDEXED, _NAME_REF
        for name, value in headers:
            if isinstance(name, str):
                name = name.encode()
            if isinstance(value, str):
                value = value.encode()
            index = full.get((name, value))
            if index is not None:
                out.append(indexed[index])
                continue
            index = by_name.get(name)
            if index is not None:
                out.append(name_ref[index])  # literal without indexing, indexed name
            else:
                out.append(b"\x00" + _integer(len(name), 7, 0) + name)
            out.append(_integer(len(value), 7, 0) + value)
        return b"".join(out)
