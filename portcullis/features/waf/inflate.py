"""Inflating a compressed response body for phase 4, a bounded amount at a time.

The CRS's data-leakage rules read the text of a page; an upstream that compresses its answers
(`Content-Encoding: gzip` or `deflate`) would give them noise. The body is forwarded as it came;
only a copy is inflated for inspection, and never more than the inspected part
(`max_response_body`), however far the compressed bytes would expand.
"""

from __future__ import annotations

import zlib

# a body coding (Content-Encoding, lower case) -> the zlib window bits that read it
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Inflater:
    """Turns the pieces of a gzip or deflate body into its text, up to a limit."""

    __slots__ = ("coding", "failed", "fed", "zobj")

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.zobj = zlib.decompressobj(CODINGS[coding])
        self.fed = False
        self.failed = False  # not valid data: what came before it is all there is to read

    def inflate(self, piece: bytes, room: int) -> bytes:
        """At most `room` bytes of text from the next piece of the body."""
        if self.failed or room <= 0 or not piece:
            return b""
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


def body_coding(value: bytes | None) -> str | None:
    """The coding of a body that can be inflated for inspection: "" for none, "gzip" or
    "deflate"; None for anything else (several codings, br ...), which is not read."""
    if value is None:
        return ""
    coding = value.strip().lower().decode("latin-1")
    if coding in ("", "identity"):
        return ""
    return coding if coding in CODINGS else None
