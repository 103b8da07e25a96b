"""The request checks the HTTP/2 connection makes itself (h2's own are off), and the decoder that
remembers repeated header blocks: it must decode exactly as hpack's own decoder does."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.server.h2_fields import (
    MALFORMED,
    REFUSED,
    CachingDecoder,
    RequestFields,
    request_fields,
    trailer_fields,
)

RID = b"x-request-id"
BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1"), (b":authority", b"a.test")]


def _fields(*extra: tuple[bytes, bytes], base: list[tuple[bytes, bytes]] = BASE) -> RequestFields:
    found = request_fields([*base, *extra], RID)
    assert isinstance(found, RequestFields), found
    return found


def test_a_request_and_what_is_taken_from_it() -> None:
    found = _fields((b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2"), (b"content-length", b"3"),
                    (b"x-request-id", b"abc"), (b"te", b"Trailers"))  # fmt: skip
    assert (found.method, found.path, found.authority, found.length, found.request_id) == (
        b"GET", b"/a?b=1", b"a.test", 3, b"abc"
    )
    assert found.headers == [
        (b"accept", b"*/*"), (b"content-length", b"3"), (b"x-request-id", b"abc"), (b"te", b"Trailers"),
        (b"cookie", b"a=1; b=2"), (b"host", b"a.test"),
    ]  # fmt: skip


def test_host_without_authority_and_the_same_in_both() -> None:
    only_host = [f for f in BASE if f[0] != b":authority"]
    assert _fields((b"host", b"h.test"), base=only_host).authority == b"h.test"
    both = _fields((b"host", b"a.test"))
    assert [v for n, v in both.headers if n == b"host"] == [b"a.test"]


@pytest.mark.parametrize(
    ("block", "why"),
    [
        ([*BASE, (b"X-Upper", b"1")], "upper-case name"),
        ([*BASE, (b"x y", b"1")], "space in a name"),
        ([*BASE, (b"x(y)", b"1")], "not a token"),
        ([*BASE, (b"", b"1")], "empty name"),
        ([*BASE, (b"x-a", b"1\r\nx-b: 2")], "CR LF in a value"),
        ([*BASE, (b"x-a", b"a\x00b")], "NUL in a value"),
        ([*BASE, (b"x-a", b" padded")], "leading space"),
        ([*BASE, (b"x-a", b"padded\t")], "trailing tab"),
        ([*BASE, (b"connection", b"keep-alive")], "connection-specific"),
        ([*BASE, (b"transfer-encoding", b"chunked")], "transfer-encoding"),
        ([*BASE, (b"upgrade", b"websocket")], "upgrade"),
        ([*BASE, (b"te", b"gzip")], "te other than trailers"),
        ([*BASE, (b"content-length", b"1x")], "bad content-length"),
        ([*BASE, (b"content-length", b"1"), (b"content-length", b"2")], "two content-lengths"),
        ([*BASE, (b"host", b"other.test")], "host differs from :authority"),
        ([*BASE[:3], (b"host", b"a.test"), (b"host", b"a.test")], "two hosts"),
        (BASE[:3], "neither host nor :authority"),
        ([BASE[0], BASE[1], BASE[3]], "no :path"),
        ([BASE[0], BASE[2], BASE[3]], "no :scheme"),
        (BASE[1:], "no :method"),
        ([*BASE[:2], (b":path", b""), BASE[3]], "empty :path"),
        ([*BASE[:2], (b":path", b"/a b"), BASE[3]], "space in :path"),
        ([(b":method", b"GE(T"), *BASE[1:]], "method not a token"),
        ([*BASE, (b":status", b"200")], "response pseudo-header"),
        ([*BASE, (b":protocol", b"websocket")], "unknown pseudo-header"),
        ([*BASE, (b":path", b"/again")], "repeated pseudo-header"),
        ([*BASE[:2], (b"accept", b"*/*"), *BASE[2:]], "pseudo-header after a regular one"),
        ([*BASE[:3], (b":authority", b"a.test\r\n")], "CR LF in :authority"),
    ],
)
def test_malformed(block: list[tuple[bytes, bytes]], why: str) -> None:
    assert request_fields(block, RID) == MALFORMED, why


def test_connect_is_refused() -> None:
    assert request_fields([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], RID) == REFUSED


def test_repeated_fields_are_checked_again_only_when_new() -> None:
    for _ in range(3):
        assert isinstance(request_fields([*BASE, (b"accept", b"*/*")], RID), RequestFields)
        assert request_fields([*BASE, (b"accept", b"*/*\n")], RID) == MALFORMED


def test_trailers() -> None:
    good = [(b"grpc-status", b"0"), (b"te", b"trailers")]
    assert trailer_fields(good) == good
    for bad in [(b":path", b"/"), (b"connection", b"close"), (b"X-A", b"1"), (b"x-a", b"1\r\n"), (b"te", b"gzip")]:
        assert trailer_fields([(b"x-ok", b"1"), bad]) is None, bad


# --------------------------------------------------------------------------- the caching decoder

_header = st.tuples(
    st.sampled_from([":method", ":path", "accept", "user-agent", "x-a", "x-b", "cookie", "authorization"]),
    st.sampled_from(["GET", "/", "/x", "*/*", "a" * 50, "b" * 300, "c", ""]),
)
_block = st.lists(_header, min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_block, st.booleans(), st.sampled_from([None, 0, 64, 256, 4096])), min_size=1, max_size=25))
def test_caching_decoder_decodes_as_hpack(steps: list[tuple[list[tuple[str, str]], bool, int | None]]) -> None:
    """A client encoder (dynamic table, size updates, sensitive fields never indexed), each block
    sent once or twice in a row (the second time fully indexed, often the very same bytes): both
    decoders give the same fields, block after block."""
    encoder, plain, caching = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    for block, again, size in steps:
        if size is not None:
            encoder.header_table_size = size
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if n == "authorization" else (n, v) for n, v in block]
        for _ in range(2 if again else 1):
            data = encoder.encode(fields)
            assert caching.decode(data, raw=True) == plain.decode(data, raw=True)
            assert list(caching.header_table.dynamic_entries) == list(plain.header_table.dynamic_entries)


def test_caching_decoder_reuses_only_table_neutral_blocks() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    first = encoder.encode([(":method", "GET"), ("x-a", "1")])  # inserts x-a: 1
    decoder.decode(first, raw=True)
    assert not decoder._blocks
    repeat = encoder.encode([(":method", "GET"), ("x-a", "1")])  # all indexed now
    assert decoder.decode(repeat, raw=True) == [(b":method", b"GET"), (b"x-a", b"1")]
    assert repeat in decoder._blocks
    got = decoder.decode(repeat, raw=True)
    got.append((b"mutated", b"copy"))  # a caller's list is its own
    assert decoder.decode(repeat, raw=True) == [(b":method", b"GET"), (b"x-a", b"1")]
    decoder.decode(encoder.encode([("x-b", "2")]), raw=True)  # the table changes: the memory goes
    assert not decoder._blocks


def test_caching_decoder_keeps_the_size_limit() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    decoder.max_header_list_size = 200
    big = encoder.encode([("x-big", "v" * 100)])
    decoder.decode(big, raw=True)
    repeat = encoder.encode([("x-big", "v" * 100), ("x-big", "v" * 100)])
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(repeat, raw=True)


def test_caching_decoder_keeps_only_small_results() -> None:
    """A short block can expand through the dynamic table: only small decoded blocks are kept."""
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    decoder.decode(encoder.encode([("x-big", "v" * 3000)]), raw=True)
    repeat = encoder.encode([("x-big", "v" * 3000), ("x-big", "v" * 3000)])
    assert len(repeat) < 10
    assert len(decoder.decode(repeat, raw=True)) == 2
    assert not decoder._blocks
