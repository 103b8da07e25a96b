"""The static-table HPACK encoder used for HTTP/2 responses decodes, with hpack's decoder, to
exactly what was encoded, whatever the names, values and lengths."""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given
from hypothesis import strategies as st

from portcullis.server.hpack_static import StaticEncoder

_names = st.one_of(
    st.sampled_from([b":status", b"content-type", b"content-length", b"date", b"server", b"set-cookie", b"x-id"]),
    st.binary(min_size=1, max_size=300).map(lambda b: bytes(c % 26 + 97 for c in b)),
)
_values = st.one_of(st.sampled_from([b"200", b"404", b"", b"gzip, deflate"]), st.binary(max_size=400))


@given(st.lists(st.tuples(_names, _values), max_size=30))
def test_round_trip(headers: list[tuple[bytes, bytes]]) -> None:
    decoder = Decoder()
    decoder.max_header_list_size = 1 << 30
    assert decoder.decode(StaticEncoder().encode(headers), raw=True) == headers


def test_static_matches_are_one_byte() -> None:
    assert StaticEncoder().encode([(b":status", b"200")]) == b"\x88"
    assert StaticEncoder().encode([(b":status", b"204")]) == b"\x89"
