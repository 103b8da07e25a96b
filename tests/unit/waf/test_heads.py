"""A request head parsed with what its headers made for an earlier request line (`Shared.head`
keeps that from the first time) makes what the plain parse of the whole head makes."""

from __future__ import annotations

from portcullis.features.waf.cache import Budget, Shared
from portcullis.features.waf.request import HttpRequest, parse_head
from portcullis.features.waf.transaction import Transaction

HEADER_SETS: list[list[tuple[str, str]]] = [
    [("Host", "example.com"), ("User-Agent", "x")],
    [("Host", "example.com"), ("Cookie", "a=1; ;b; c = 2 ;"), ("cookie", "d=%41")],
    [("Host", "h"), ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
    [("Host", "h"), ("content-type", "Multipart/Form-Data; boundary=x"), ("Content-Length", "0")],
    [("Content-Type", "application/vnd.api+json")],
    [("CONTENT-TYPE", "text/xml"), ("Content-Type", "application/json")],  # the first one counts
    [],
]

TARGETS = [
    "/",
    "/search/items?q=blue+shoes&page=2&sort=price",
    "/a/b.php?x=%27%20OR%201&x=&&=v&y",
    "/p%2Fq?a=1#frag?b=2",
    "/dir/#x",
    "http://example.com/abs/path?q=1",
    "https://example.com?only=query",
    "//?",
    "*",
    "/?a+b=c+d&a+b=c%2Bd",
]

METHODS = [("GET", "HTTP/1.1"), ("POST", "HTTP/1.0"), ("PROPFIND", "")]


def requests() -> list[HttpRequest]:
    # every header set behind every request line, and every request line behind every header set
    return [
        HttpRequest(method, target, protocol, list(headers))
        for method, protocol in METHODS
        for target in TARGETS
        for headers in HEADER_SETS
    ]


def test_a_head_makes_what_the_plain_parse_makes() -> None:
    shared = Shared()
    for round_ in range(2):  # the second time round, heads are kept
        for request in requests():
            _, _, head = shared.head(request)
            plain = parse_head(request)
            assert head.collections == plain.collections, (round_, request)
            assert head.scalars == plain.scalars, (round_, request)
            assert head.processor == plain.processor, (round_, request)


def test_the_headers_are_parsed_once_for_every_request_line() -> None:
    shared = Shared()
    headers = HEADER_SETS[1]
    first = shared.head(HttpRequest("GET", "/?a=1", "HTTP/1.1", list(headers)))
    second = shared.head(HttpRequest("GET", "/?a=2", "HTTP/1.1", list(headers)))
    other = shared.head(HttpRequest("GET", "/?a=2", "HTTP/1.1", [("Host", "example.com")]))
    assert first[0] != second[0] and first[1] == second[1] != other[1]
    assert second[2].collections["REQUEST_COOKIES"] is first[2].collections["REQUEST_COOKIES"]
    assert second[2].collections["REQUEST_COOKIES"] == [("a", "1"), ("b", ""), ("c", "2"), ("d", "%41")]
    assert other[2].collections["REQUEST_COOKIES"] == []


def test_what_headers_made_starts_over_with_the_other_caches() -> None:
    shared = Shared(Budget(entries=5))  # a reset every few heads
    for request in requests():
        number, headers_number, head = shared.head(request)
        plain = parse_head(request)
        assert head.collections == plain.collections and head.scalars == plain.scalars
        assert head.processor == plain.processor and number != headers_number
    assert shared.budget.resets > 0 and len(shared.parts) <= 6


def test_a_transaction_reads_the_same_collections_through_the_kept_headers() -> None:
    shared = Shared()
    for request in requests():
        txn = Transaction(request, shared=shared)
        plain = parse_head(request)
        assert txn.items("REQUEST_HEADERS") == plain.collections["REQUEST_HEADERS"]
        assert txn.items("REQUEST_COOKIES_NAMES") == [(k, k) for k, _ in plain.collections["REQUEST_COOKIES"]]
        assert txn.items("FULL_REQUEST_LENGTH") == [("", plain.scalars["FULL_REQUEST_LENGTH"])]
        assert txn.body_processor == plain.processor
        assert not hasattr(txn, "__dict__")  # slots: built without an instance dict
