"""Inflating a compressed response body for phase 4, a bounded amount at a time.

The CRS's data-leakage rules read the text of a page; an upstream that compresses its answers
(`Content-Encoding: gzip`, `deflate` or `br`) would give them noise. The body is forwarded as it
came; only a copy is inflated for inspection, and never more than the inspected part
(`max_response_body`), however far the compressed bytes would expand.
"""

from __future__ import annotations

import zlib

import brotli  # type: ignore[import-untyped]  # (it ships no type information)

# a body coding (Content-Encoding, lower case) -> the zlib window bits that read it
ZLIB_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
CODINGS = frozenset([*ZLIB_CODINGS, "br"])


class Inflater:
    """Turns the pieces of a gzip, deflate or br body into its text, up to a limit."""

    __slots__ = ("brotli", "coding", "failed", "fed", "zobj")

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.brotli = brotli.Decompressor() if coding == "br" else None
        self.zobj = zlib.decompressobj(ZLIB_CODINGS.get(coding, zlib.MAX_WBITS))
        self.fed = False
        self.failed = False  # not valid data: what came before it is all there is to read

    def inflate(self, piece: bytes, room: int) -> bytes:
        """At most `room` bytes of text from the next piece of the body."""
        if self.failed or room <= 0 or not piece:
            return b""
        if self.brotli is not None:
            return self._unbrotli(piece, room)
        try:
            out = self.zobj.decompress(piece, room)
        except zlib.error:
            if self.coding == "deflate" and not self.fed:
                # `deflate` was meant to be zlib-wrapped, but some servers send it raw
                self.zobj = zlib.decompressobj(-zlib.MAX_WBITS)
                self.fed = True
                return self.inflate(piece, room)
            self.failed = True
            return b""
        self.fed = True
        return out

    def _unbrotli(self, piece: bytes, room: int) -> bytes:
        # the decompressor stops growing its output at the limit and keeps the rest of its input:
        # it must then be drained (with no input) before it takes the next piece
        dec = self.brotli
        assert dec is not None
        try:
            out: bytes = b""
            while not dec.can_accept_more_data():
                more = dec.process(b"", output_buffer_limit=room - len(out))
                out += more
                if len(out) >= room:
                    return out[:room]  # the inspected part is full: the rest is not read
                if not more:
                    self.failed = True  # neither output nor room for input: nothing more to read
                    return out
            out += dec.process(piece, output_buffer_limit=room - len(out))
        except brotli.error:
            self.failed = True
            return b""
        return out[:room]


def body_coding(value: bytes | None) -> str | None:
    """The coding of a body that can be inflated for inspection: "" for none, "gzip",
    "deflate" or "br"; None for anything else (several codings, zstd ...), which is not read."""
    if value is None:
        return ""
    coding = value.strip().lower().decode("latin-1")
    if coding in ("", "identity"):
        return ""
    return coding if coding in CODINGS else None
