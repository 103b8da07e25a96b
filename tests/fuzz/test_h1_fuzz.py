"""Fuzzing the HTTP/1.1 request reader.

Whatever bytes arrive, and however they are split, the reader either produces events or raises
ProxyError / UpgradeRequested: never any other exception. For valid requests, the events
reproduce every request and its body exactly, whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.engine.errors import ProxyError
from portcullis.engine.messages import Headers
from portcullis.http.h1 import H1RequestReader, H1Settings, RequestHead, UpgradeRequested

FUZZ = settings(max_examples=500, deadline=None)


class Recorder(H1RequestReader):
    def __init__(self, limits: H1Settings) -> None:
        super().__init__(limits)
        self.requests: list[tuple[RequestHead, list[bytes], Headers | None]] = []
        self.ended: list[bool] = []

    def request_head(self, head: RequestHead) -> None:
        self.requests.append((head, [], None))
        self.ended.append(False)

    def request_body(self, chunk: bytes) -> None:
        assert self.requests and not self.ended[-1], "body outside a request"
        self.requests[-1][1].append(bytes(chunk))

    def request_end(self, trailers: Headers | None) -> None:
        assert self.requests and not self.ended[-1], "end outside a request"
        head, body, _ = self.requests[-1]
        self.requests[-1] = (head, body, trailers)
        self.ended[-1] = True


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def feed_pieces(pieces: list[bytes], limits: H1Settings | None = None) -> Recorder:
    """Feed until the end or an allowed refusal; anything else propagates and fails the test."""
    reader = Recorder(limits or H1Settings())
    for piece in pieces:
        try:
            reader.feed(piece)
        except (ProxyError, UpgradeRequested):
            assert reader.stopped
            reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # ignored after a refusal
            break
    return reader


cuts_st = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=24)
small_limits = st.builds(
    H1Settings,
    max_request_line=st.integers(1, 300),
    max_header_bytes=st.integers(1, 600),
    max_headers=st.integers(1, 12),
)


# ---------------------------------------------------------------------------- arbitrary input


@FUZZ
@given(data=st.binary(max_size=3000), cuts=cuts_st)
def test_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    feed_pieces(split(data, cuts))


TOKENS = [
    b"\r\n", b"\r", b"\n", b": ", b":", b" ", b"\t", b"\x00", b"Host: a\r\n", b"Host: ", b"Content-Length: ",
    b"Transfer-Encoding: ", b"chunked", b"gzip", b", ", b"Connection: ", b"close", b"upgrade", b"Upgrade: h2c\r\n",
    b"Expect: 100-continue\r\n", b"0", b"5", b"ff", b"-1", b";ext=1", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n",
    b"POST http://h/p HTTP/1.1\r\n", b"HTTP/1.0", b"\xff", b"\x7f", b"X-Name: value\r\n",
]  # fmt: skip
# byte soup made of HTTP pieces: reaches deeper into the parser than uniform random bytes
http_soup = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), max_size=80).map(b"".join)


@FUZZ
@given(
    prefix=st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\nHost: a\r\n", b"OPTIONS * HTTP/1.0\r\n"]),
    data=st.one_of(st.binary(max_size=2000), http_soup),
    cuts=cuts_st,
    limits=st.one_of(st.just(H1Settings()), small_limits),
)
def test_arbitrary_bytes_after_a_request_line(
    prefix: bytes, data: bytes, cuts: list[int], limits: H1Settings
) -> None:
    feed_pieces(split(prefix + data, cuts), limits)


# ---------------------------------------------------------------------------- valid requests

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
RESERVED = {
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "te", "trailer",
    "keep-alive", "proxy-connection",
}  # fmt: skip

header_name = st.text(TCHAR, min_size=1, max_size=20).filter(lambda n: n.lower() not in RESERVED)
# a field value: visible ASCII, spaces and tabs inside, obs-text; no leading/trailing whitespace
header_value = st.builds(
    lambda core: core.strip(b" \t"),
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128)),
)


@dataclass
class Request:
    raw: bytes
    method: str
    target: bytes
    headers: Headers
    body: bytes
    chunked: bool
    trailers: Headers


@st.composite
def valid_request(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(METHODS))
    target = ("/" + draw(st.text(PCHAR.replace("%", ""), max_size=40))).encode()
    if draw(st.booleans()):
        target += b"?" + draw(st.text(PCHAR.replace("%", "") + "?", max_size=20)).encode()
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    headers: Headers = []
    if version == b"1.1" or draw(st.booleans()):
        headers.append((draw(st.sampled_from([b"Host", b"host", b"HOST"])), b"example.com"))
    for name, value in draw(st.lists(st.tuples(header_name, header_value), max_size=8)):
        headers.insert(draw(st.integers(0, len(headers))), (name.encode(), value))
    if version == b"1.0":
        headers.append((b"Connection", b"keep-alive"))  # so a pipelined request may follow
    body = draw(st.binary(max_size=600))
    chunked = version == b"1.1" and draw(st.booleans())
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 200), max_size=8))
        encoded, start = b"", 0
        for size in [*sizes, len(body)]:
            piece = body[start : start + size]
            start += len(piece)
            if not piece:
                continue
            ext = draw(st.sampled_from([b"", b";a=b", b";flag", b';q="x y"']))
            encoded += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        trailers = [(n.encode(), v) for n, v in draw(st.lists(st.tuples(header_name, header_value), max_size=3))]
        encoded += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    else:
        trailers = []
        if body or draw(st.booleans()):
            headers.insert(draw(st.integers(0, len(headers))), (b"Content-Length", str(len(body)).encode()))
        encoded = body
    head = method.encode() + b" " + target + b" HTTP/" + version + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    return Request(head + encoded, method, target, headers, body, chunked, trailers)


@FUZZ
@given(requests=st.lists(valid_request(), min_size=1, max_size=3), cuts=cuts_st)
def test_valid_requests_reproduce_exactly_whatever_the_split(requests: list[Request], cuts: list[int]) -> None:
    stream = b"".join(r.raw for r in requests)
    reader = Recorder(H1Settings())
    for piece in split(stream, cuts):
        reader.feed(piece)  # valid: must never raise
    assert len(reader.requests) == len(requests)
    assert all(reader.ended)
    for want, (head, body, trailers) in zip(requests, reader.requests, strict=True):
        assert head.method == want.method
        assert head.target == want.target
        assert head.headers == want.headers
        assert head.chunked is want.chunked
        assert b"".join(body) == want.body
        assert (trailers or []) == want.trailers
        assert head.host == (b"example.com" if any(n.lower() == b"host" for n, _ in want.headers) else None)
        if not want.chunked:
            assert head.content_length in (None, len(want.body))
            assert bool(head.content_length) == bool(want.body)


@FUZZ
@given(request=valid_request(), data=st.data())
def test_valid_request_byte_by_byte_equals_whole(request: Request, data: st.DataObject) -> None:
    whole = Recorder(H1Settings())
    whole.feed(request.raw)
    pieces = Recorder(H1Settings())
    step = data.draw(st.integers(1, 7))
    for i in range(0, len(request.raw), step):
        pieces.feed(request.raw[i : i + step])
    assert [(h.method, h.target, h.headers, b"".join(b), t) for h, b, t in whole.requests] == [
        (h.method, h.target, h.headers, b"".join(b), t) for h, b, t in pieces.requests
    ]
    assert whole.ended == pieces.ended == [True]


# ---------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(b"".join(r.raw for r in draw(st.lists(valid_request(), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup_line", "special"]))
        pos = draw(st.integers(0, len(raw)))
        if op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(raw):
            raw[pos] = draw(st.integers(0, 255))
        elif op == "dup_line":
            lines = bytes(raw).split(b"\r\n")
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
            raw = bytearray(b"\r\n".join(lines))
        else:
            raw[pos:pos] = draw(
                st.sampled_from(
                    [
                        b"\r\nContent-Length: 5",
                        b"\r\nTransfer-Encoding: chunked",
                        b"\r\nTransfer-Encoding: gzip, chunked",
                        b"\r\nHost: evil",
                        b"\r\nConnection: upgrade\r\nUpgrade: websocket",
                        b"\r\nExpect: 100-continue",
                        b"\r\n\r\n",
                        b"\r\n \r\n",
                        b"\r",
                        b"\n",
                        b"\x00",
                        b"0\r\n\r\n",
                        b"ffffffffffffffffffff\r\n",
                        b"GET http://x?y HTTP/1.1\r\n",
                        b"CONNECT a:1 HTTP/1.1\r\n",
                        b" HTTP/2.0\r\n",
                    ]
                )
            )
    return bytes(raw)


@FUZZ
@given(data=mutated(), cuts=cuts_st, limits=st.one_of(st.just(H1Settings()), small_limits))
def test_mutated_requests_only_raise_proxy_errors(data: bytes, cuts: list[int], limits: H1Settings) -> None:
    reader = feed_pieces(split(data, cuts), limits)
    for head, _, _ in reader.requests:
        # what was delivered passed validation
        assert head.version in ("1.0", "1.1")
        assert head.method != "CONNECT"
        assert head.target.startswith(b"/") or head.target == b"*"
        assert not (head.chunked and head.content_length is not None)


@FUZZ
@given(data=mutated(), cuts=cuts_st)
def test_mutated_requests_parse_the_same_whatever_the_split(data: bytes, cuts: list[int]) -> None:
    def outcome(pieces: list[bytes]) -> tuple[list[tuple[bytes, bytes, bytes]], int | str | None]:
        reader = Recorder(H1Settings())
        result: int | str | None = None
        for piece in pieces:
            try:
                reader.feed(piece)
            except ProxyError as exc:
                result = exc.status
                break
            except UpgradeRequested:
                result = "upgrade"
                break
        done = [
            (h.target, h.method.encode(), b"".join(b))
            for (h, b, _), ended in zip(reader.requests, reader.ended, strict=True)
            if ended
        ]
        return done, result

    whole_done, whole_result = outcome([data])
    split_done, split_result = outcome(split(data, cuts))
    assert whole_done == split_done
    assert whole_result == split_result
