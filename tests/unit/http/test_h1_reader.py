"""The sans-IO HTTP/1.1 request reader: framing, head fields, refusals and limits."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from portcullis.engine.errors import ProxyError
from portcullis.engine.messages import Headers
from portcullis.http.h1 import H1RequestReader, H1Settings, RequestHead, UpgradeRequested


class Collector(H1RequestReader):
    """Records every event; `heads_seen` keeps a copy of each head's headers as delivered."""

    def __init__(self, settings: H1Settings | None = None) -> None:
        super().__init__(settings or H1Settings())
        self.heads: list[RequestHead] = []
        self.heads_seen: list[Headers] = []
        self.events: list[tuple[str, object]] = []

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.heads_seen.append(list(head.headers))
        self.events.append(("head", head))

    def request_body(self, chunk: bytes) -> None:
        self.events.append(("body", bytes(chunk)))

    def request_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def bodies(self) -> list[bytes]:
        """The body of each completed request, in order."""
        out: list[bytes] = []
        current = b""
        for kind, value in self.events:
            if kind == "head":
                current = b""
            elif kind == "body":
                assert isinstance(value, bytes)
                current += value
            else:
                out.append(current)
        return out

    def ends(self) -> list[object]:
        return [value for kind, value in self.events if kind == "end"]


def feed_all(data: bytes, pieces: Iterable[int] | None = None, settings: H1Settings | None = None) -> Collector:
    reader = Collector(settings)
    if pieces is None:
        reader.feed(data)
    else:
        start = 0
        for size in pieces:
            reader.feed(data[start : start + size])
            start += size
        reader.feed(data[start:])
    return reader


def feed_bytewise(reader: H1RequestReader, data: bytes) -> None:
    for i in range(len(data)):
        reader.feed(data[i : i + 1])


def refused(data: bytes, status: int, settings: H1Settings | None = None, bytewise: bool = False) -> Collector:
    reader = Collector(settings)
    with pytest.raises(ProxyError) as info:
        if bytewise:
            feed_bytewise(reader, data)
        else:
            reader.feed(data)
    assert info.value.status == status, info.value
    assert reader.stopped
    return reader


# ---------------------------------------------------------------------------- valid requests


def test_simple_get() -> None:
    reader = feed_all(b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert len(reader.heads) == 1
    head = reader.heads[0]
    assert head.method == "GET"
    assert head.target == b"/index.html?q=1"
    assert head.version == "1.1"
    assert head.host == b"example.com"
    assert head.headers == [(b"Host", b"example.com")]
    assert head.content_length is None
    assert not head.chunked
    assert not head.has_body
    assert head.keep_alive
    assert head.upgrade is None
    assert not head.expect_continue
    assert [kind for kind, _ in reader.events] == ["head", "end"]
    assert reader.ends() == [None]
    assert not reader.in_head


def test_headers_keep_order_case_and_duplicates() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nX-Zeta: 1\r\nHost: a.example\r\nx-lower: two\r\nX-Zeta: 3\r\n"
        b"ACCEPT: */*\r\nX-Tab: a\tb\r\n\r\n"
    )
    head = feed_all(raw).heads[0]
    assert head.headers == [
        (b"X-Zeta", b"1"),
        (b"Host", b"a.example"),
        (b"x-lower", b"two"),
        (b"X-Zeta", b"3"),
        (b"ACCEPT", b"*/*"),
        (b"X-Tab", b"a\tb"),
    ]


def test_header_value_surrounding_whitespace_is_not_part_of_the_value() -> None:
    head = feed_all(b"GET / HTTP/1.1\r\nHost:    a.example\r\nX-A:\t v \r\n\r\n").heads[0]
    assert head.host == b"a.example"


CL_REQUEST = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("pieces", [None, [5], [60, 1, 1, 1], [len(CL_REQUEST) - 1], [3] * 40])
def test_content_length_body_across_feeds(pieces: list[int] | None) -> None:
    reader = feed_all(CL_REQUEST, pieces)
    head = reader.heads[0]
    assert head.content_length == 26
    assert head.has_body
    assert not head.chunked
    assert reader.bodies() == [b"abcdefghijklmnopqrstuvwxyz"]
    assert reader.ends() == [None]


def test_content_length_body_byte_by_byte() -> None:
    reader = Collector()
    feed_bytewise(reader, CL_REQUEST)
    assert len(reader.heads) == 1
    assert reader.bodies() == [b"abcdefghijklmnopqrstuvwxyz"]
    body_events = [v for k, v in reader.events if k == "body"]
    assert len(body_events) == 26  # streamed, not buffered until the end


def test_body_is_not_ended_before_its_last_byte() -> None:
    reader = Collector()
    reader.feed(CL_REQUEST[:-1])
    assert reader.ends() == []
    reader.feed(CL_REQUEST[-1:])
    assert reader.ends() == [None]


def test_zero_content_length() -> None:
    reader = feed_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    head = reader.heads[0]
    assert head.content_length == 0
    assert not head.has_body
    assert reader.bodies() == [b""]


CHUNKED_REQUEST = (
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value;flag\r\nhello\r\n"
    b"1;q=\"quoted; string\"\r\n \r\n"
    b"A\r\n0123456789\r\n"
    b"0;last\r\n\r\n"
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_chunked_body_with_extensions(bytewise: bool) -> None:
    reader = Collector()
    if bytewise:
        feed_bytewise(reader, CHUNKED_REQUEST)
    else:
        reader.feed(CHUNKED_REQUEST)
    head = reader.heads[0]
    assert head.chunked
    assert head.content_length is None
    assert head.has_body
    assert reader.bodies() == [b"hello 0123456789"]
    assert len(reader.ends()) == 1
    assert not reader.ends()[0]  # no trailers: None or empty


def test_transfer_encoding_chunked_is_case_insensitive() -> None:
    reader = feed_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert reader.heads[0].chunked
    assert reader.bodies() == [b"ok"]


TRAILER_REQUEST = (
    b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\nX-Other: 1\r\n\r\n"
)


def test_chunked_body_with_trailers_is_read_to_the_end() -> None:
    reader = feed_all(TRAILER_REQUEST)
    assert reader.bodies() == [b"abc"]
    assert len(reader.ends()) == 1


def test_trailers_are_delivered_to_request_end() -> None:
    reader = feed_all(TRAILER_REQUEST)
    assert reader.ends() == [[(b"X-Checksum", b"900150983cd24fb0"), (b"X-Other", b"1")]]


def test_trailers_do_not_change_the_delivered_head() -> None:
    # found while writing these tests: trailer fields used to be appended to head.headers
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Late: 1\r\n\r\n"
    )
    reader = feed_all(raw)
    assert reader.heads[0].headers == reader.heads_seen[0]


def test_trailers_over_the_header_limit() -> None:
    settings = H1Settings(max_request_line=100, max_header_bytes=1000, max_headers=10)
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 100) for i in range(20))
        + b"\r\n"
    )
    reader = refused(raw, 431, settings=settings)
    assert reader.ends() == []


def test_slow_trailer_is_bounded() -> None:
    settings = H1Settings(max_request_line=100, max_header_bytes=1000, max_headers=10)
    reader = Collector(settings)
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
    with pytest.raises(ProxyError) as info:
        for _ in range(200):  # 200 KiB, far above every limit
            reader.feed(b"a" * 1024)
    assert info.value.status == 431


def test_pipelined_requests_in_one_feed() -> None:
    raw = (
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /c HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        b"DELETE /d HTTP/1.1\r\nHost: d\r\n\r\n"
    )
    reader = feed_all(raw)
    assert [(h.method, h.target, h.host) for h in reader.heads] == [
        ("GET", b"/a", b"a"),
        ("POST", b"/b", b"b"),
        ("PUT", b"/c", b"c"),
        ("DELETE", b"/d", b"d"),
    ]
    assert reader.bodies() == [b"", b"hello", b"hi", b""]
    # each head comes with only its own headers
    assert reader.heads[1].headers == [(b"Host", b"b"), (b"Content-Length", b"5")]
    assert reader.heads[3].content_length is None


def test_pipelined_request_split_inside_second_head() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\n"
    cut = raw.index(b"Host: b") + 3
    reader = Collector()
    reader.feed(raw[:cut])
    assert len(reader.heads) == 1
    assert reader.in_head
    reader.feed(raw[cut:])
    assert [h.target for h in reader.heads] == [b"/a", b"/b"]
    assert reader.heads[1].host == b"b"


def test_large_body_then_start_of_next_request_in_one_feed() -> None:
    reader = Collector()
    body = b"x" * 50_000
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50000\r\n\r\n" + body + b"GET /next HTTP/1.1\r\n")
    reader.feed(b"Host: a\r\n\r\n")
    assert [h.target for h in reader.heads] == [b"/", b"/next"]


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive(raw: bytes, keep_alive: bool) -> None:
    assert feed_all(raw).heads[0].keep_alive is keep_alive


def test_http10_without_host_is_allowed() -> None:
    head = feed_all(b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n").heads[0]
    assert head.version == "1.0"
    assert head.host is None
    assert head.target == b"/old"


def test_http10_transfer_encoding_is_not_kept_alive() -> None:
    raw = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    reader = Collector()
    try:
        reader.feed(raw)
    except ProxyError as exc:
        assert exc.status == 400
        return
    assert not reader.heads[0].keep_alive


@pytest.mark.parametrize(
    ("target", "host", "path"),
    [
        (b"http://example.com:8080/p/q?x=1", b"example.com:8080", b"/p/q?x=1"),
        (b"https://secure.example.com/", b"secure.example.com", b"/"),
        (b"http://example.com", b"example.com", b"/"),
        (b"http://[::1]:8080/v6", b"[::1]:8080", b"/v6"),
    ],
)
def test_absolute_form_target_takes_host_from_target(target: bytes, host: bytes, path: bytes) -> None:
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: other.example\r\n\r\n"
    head = feed_all(raw).heads[0]
    assert head.host == host
    assert head.target == path
    # the received Host is replaced by the target's authority (RFC 9112 3.2.2)
    assert [v for n, v in head.headers if n.lower() == b"host"] == [host]


def test_absolute_form_with_query_and_no_path() -> None:
    head = feed_all(b"GET http://example.com?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n").heads[0]
    assert head.host == b"example.com"
    assert head.target == b"/?x=1"


def test_absolute_form_with_userinfo_is_refused() -> None:
    refused(b"GET http://user@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400)


def test_absolute_form_with_empty_authority_is_refused() -> None:
    refused(b"GET http:///x HTTP/1.1\r\nHost: example.com\r\n\r\n", 400)


def test_options_asterisk() -> None:
    head = feed_all(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").heads[0]
    assert head.method == "OPTIONS"
    assert head.target == b"*"


def test_asterisk_is_only_for_options() -> None:
    reader = refused(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400)
    assert reader.heads == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"100-continue", True), (b"100-Continue", True), (b"something-else", False)],
)
def test_expect_continue(value: bytes, expected: bool) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: " + value + b"\r\nContent-Length: 2\r\n\r\n"
    reader = Collector()
    reader.feed(raw)  # the head arrives before the body: the server may answer 100 now
    head = reader.heads[0]
    assert head.expect_continue is expected
    assert reader.ends() == []
    reader.feed(b"ok")
    assert reader.bodies() == [b"ok"]


def test_upgrade_with_connection_upgrade() -> None:
    raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    reader = Collector()
    with pytest.raises(UpgradeRequested) as info:
        reader.feed(raw + b"\x81\x05hello")
    assert info.value.leftover == b"\x81\x05hello"
    assert reader.heads[0].upgrade == b"websocket"
    assert reader.stopped
    # bytes after the switch are not HTTP/1.1: they are ignored by the reader
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(reader.heads) == 1


def test_upgrade_header_without_connection_upgrade_is_a_plain_request() -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    reader = feed_all(raw)  # no UpgradeRequested
    assert [h.target for h in reader.heads] == [b"/ws", b"/next"]
    assert reader.heads[0].upgrade is None
    assert not reader.stopped


def test_connection_header_fields_are_joined() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: X-Secret\r\nX-Secret: s\r\n\r\n"
    head = feed_all(raw).heads[0]
    assert head.connection is not None
    tokens = {t.strip().lower() for t in head.connection.split(b",")}
    assert tokens == {b"keep-alive", b"x-secret"}


def test_request_id_header_is_captured() -> None:
    settings = H1Settings(request_id_header=b"x-request-id")
    head = feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: abc-123\r\n\r\n", settings=settings).heads[0]
    assert head.request_id == b"abc-123"


def test_partial_accept_while_head_is_incomplete() -> None:
    reader = Collector()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nX-Inc")
    assert reader.in_head
    assert reader.heads == []
    assert reader.partial_accept() == b"text/html"


def test_stop_parsing_inside_an_event_ignores_the_rest() -> None:
    class StopAfterFirst(Collector):
        def request_end(self, trailers: Headers | None) -> None:
            super().request_end(trailers)
            self.stop_parsing()

    reader = StopAfterFirst()
    reader.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [h.target for h in reader.heads] == [b"/a"]
    assert reader.stopped
    reader.feed(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [h.target for h in reader.heads] == [b"/a"]


def test_proxy_error_from_an_event_propagates_and_stops() -> None:
    from portcullis.engine.errors import ErrorKind

    class Limited(Collector):
        def request_body(self, chunk: bytes) -> None:
            raise ProxyError(ErrorKind.BODY_TOO_LARGE, "too big")

    reader = Limited()
    with pytest.raises(ProxyError) as info:
        reader.feed(CL_REQUEST)
    assert info.value.status == 413
    assert reader.stopped
    reader.feed(CL_REQUEST)
    assert len(reader.heads) == 1


# ---------------------------------------------------------------------------- refusals

HEAD_REFUSALS: dict[str, tuple[bytes, int]] = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate-cl-same": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "duplicate-cl-differ": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    "cl-letters": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\nabc", 400),
    "cl-empty": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc", 400),
    "cl-overflow": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    "te-chunked-gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-xchunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    "te-identity": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    "te-chunked-param": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    "te-repeated": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "te-empty": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400),
    "obs-fold-space": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    "bare-cr-line-end": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\n\r\n", 400),
    "bare-cr-request-line": (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "nul-in-name": (b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    "ctl-in-name": (b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n", 400),
    "ctl-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
    "del-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400),
    "esc-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \x1b[31m\r\n\r\n", 400),
    "space-in-name": (b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    "space-before-colon-host": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "tab-before-colon-te": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n", 400),
    "space-before-colon-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc", 400),
    "no-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
    "empty-name": (b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    "space-after-request-line": (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    "missing-host-11": (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400),
    "repeated-host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "repeated-host-same": (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    "relative-target": (b"GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "ftp-target": (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "lower-case-method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "http-2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(HEAD_REFUSALS))
def test_head_refusals(name: str, bytewise: bool) -> None:
    raw, status = HEAD_REFUSALS[name]
    reader = refused(raw, status, bytewise=bytewise)
    assert reader.heads == [], "a refused head must never be delivered"


BODY_REFUSALS: dict[str, bytes] = {
    "chunk-size-letters": b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-negative": b"-3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x": b"0x3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-space": b"3 \r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk-size-empty": b"\r\nabc\r\n0\r\n\r\n",
    "chunk-data-too-long": b"3\r\nabcd\r\n0\r\n\r\n",
    "chunk-bare-lf": b"3\nabc\n0\n\n",
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(BODY_REFUSALS))
def test_invalid_chunks(name: str, bytewise: bool) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY_REFUSALS[name]
    reader = refused(raw, 400, bytewise=bytewise)
    assert reader.ends() == []


@pytest.mark.parametrize(
    "host",
    [b"a b", b"a/b", b"user@a", b"a, b", b'a";for=1.2.3.4;by="x'],
    ids=["space", "slash", "at", "comma", "quote"],
)
def test_invalid_host_value_is_refused(host: bytes) -> None:
    refused(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400)


# ---------------------------------------------------------------------------- limits

SMALL = H1Settings(max_request_line=100, max_header_bytes=1000, max_headers=10)


def test_request_line_at_the_limit_is_accepted() -> None:
    target = b"/" + b"a" * (SMALL.max_request_line - 1)
    head = feed_all(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", settings=SMALL).heads[0]
    assert head.target == target


def test_request_line_too_long() -> None:
    target = b"/" + b"a" * SMALL.max_request_line
    refused(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, settings=SMALL)


def test_request_line_too_long_fed_slowly_without_crlf() -> None:
    reader = Collector(SMALL)
    reader.feed(b"GET /")
    fed = 5
    with pytest.raises(ProxyError) as info:
        while fed < 100 * SMALL.max_request_line:
            reader.feed(b"a" * 7)
            fed += 7
    assert info.value.status == 414
    # refused as soon as the line passes the limit, not after buffering much more
    assert fed <= SMALL.max_request_line + 16
    assert reader.heads == []


def test_request_line_too_long_default_limit() -> None:
    settings = H1Settings()
    reader = Collector(settings)
    reader.feed(b"GET /")
    with pytest.raises(ProxyError) as info:
        for _ in range(settings.max_request_line // 1000 + 2):
            reader.feed(b"b" * 1000)
    assert info.value.status == 414


def _headers(count: int, value_len: int = 10) -> bytes:
    return b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * value_len) for i in range(count))


def test_max_headers_is_inclusive() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + _headers(SMALL.max_headers - 1) + b"\r\n"
    head = feed_all(raw, settings=SMALL).heads[0]
    assert len(head.headers) == SMALL.max_headers


def test_too_many_headers() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + _headers(SMALL.max_headers) + b"\r\n"
    reader = refused(raw, 431, settings=SMALL)
    assert reader.heads == []


def test_header_bytes_over_limit() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * SMALL.max_header_bytes + b"\r\n\r\n"
    refused(raw, 431, settings=SMALL)


def test_header_bytes_under_limit_is_accepted() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (SMALL.max_header_bytes // 2) + b"\r\n\r\n"
    assert len(feed_all(raw, settings=SMALL).heads) == 1


def test_too_many_headers_fed_slowly_without_final_crlf() -> None:
    reader = Collector(SMALL)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(ProxyError) as info:
        for i in range(1000):
            reader.feed(b"X-N%d: v\r\n" % i)
    assert info.value.status == 431
    assert reader.heads == []


def test_large_header_fed_slowly_without_crlf() -> None:
    reader = Collector(SMALL)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    fed = 0
    with pytest.raises(ProxyError) as info:
        while fed < 1_000_000:
            reader.feed(b"v" * 10)
            fed += 10
    assert info.value.status == 431
    assert fed <= SMALL.max_header_bytes + SMALL.max_request_line + 10
    assert reader.heads == []


def test_large_first_header_fed_slowly_is_431() -> None:
    """The request line came whole in the first feed; the header after it grows slowly."""
    reader = Collector(SMALL)
    reader.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    with pytest.raises(ProxyError) as info:
        for _ in range(1000):
            reader.feed(b"v" * 10)
    assert info.value.status == 431


def test_head_bound_resets_between_requests() -> None:
    # many small requests on one connection never add up to a head limit
    reader = Collector(SMALL)
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    for _ in range(50):
        for i in range(0, len(request), 37):
            reader.feed(request[i : i + 37])
    assert len(reader.heads) == 50


# ---------------------------------------------------------------------------- after an error


def test_after_an_error_further_feeds_are_ignored() -> None:
    reader = refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # no raise, no event
    reader.feed(b"\x00\x01 garbage")
    assert reader.events == []


def test_after_a_body_error_further_feeds_are_ignored() -> None:
    reader = refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400)
    count = len(reader.events)
    reader.feed(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(reader.events) == count


def test_after_a_limit_error_further_feeds_are_ignored() -> None:
    reader = Collector(SMALL)
    with pytest.raises(ProxyError):
        reader.feed(b"GET /" + b"a" * 500)
    reader.feed(b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.events == []
