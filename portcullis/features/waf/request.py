"""The request as the WAF sees it: `HttpRequest`, and the collections its head makes.

The head (method, target, protocol, headers) is parsed into collections once per distinct head
(`Shared.head`), what the headers make once per distinct headers: requests repeat heads a lot,
and headers more, and the parsed lists are only ever read. Collections
the head alone makes, and those the body processor makes from head and body, are numbered as a
whole (`HEAD_MADE`, `BODY_MADE`: see `Transaction.number`); the headers have their own number,
so what rules found in them holds for requests that differ in their request line alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portcullis.features.waf import bodies

Pairs = list[tuple[str, str]]


@dataclass(slots=True)
class HttpRequest:
    """What the WAF sees of a request; text is latin-1 (one code point per byte)."""

    method: str
    uri: str  # the raw request target, as sent
    protocol: str = "HTTP/1.1"
    headers: Pairs = field(default_factory=list)
    body: bytes = b""
    remote_addr: str = "127.0.0.1"
    remote_port: int = 0
    server_name: str = "localhost"
    server_port: int = 80


# collections made from the request line and headers alone, never changed afterwards
HEAD_MADE = frozenset(
    {"REQUEST_METHOD", "REQUEST_URI", "REQUEST_URI_RAW", "REQUEST_FILENAME", "REQUEST_BASENAME", "REQUEST_LINE",
     "REQUEST_PROTOCOL", "QUERY_STRING", "REQUEST_HEADERS", "REQUEST_HEADERS_NAMES", "REQUEST_COOKIES",
     "REQUEST_COOKIES_NAMES", "ARGS_GET", "ARGS_GET_NAMES"}
)

# what the body processor makes (from the head and the body); before it ran, the head alone
BODY_MADE = frozenset(
    {"ARGS", "ARGS_NAMES", "ARGS_POST", "ARGS_POST_NAMES", "ARGS_COMBINED_SIZE", "REQUEST_BODY",
     "REQUEST_BODY_LENGTH", "FULL_REQUEST_LENGTH", "REQBODY_PROCESSOR", "REQBODY_ERROR", "REQBODY_PROCESSOR_ERROR",
     "REQBODY_ERROR_MSG", "REQBODY_PROCESSOR_ERROR_MSG", "FILES", "FILES_NAMES", "FILES_SIZES", "FILES_COMBINED_SIZE",
     "FILES_TMPNAMES", "FILES_TMP_CONTENT", "MULTIPART_PART_HEADERS", "XML", "MULTIPART_STRICT_ERROR",
     "MULTIPART_UNMATCHED_BOUNDARY", "MULTIPART_DATA_BEFORE", "MULTIPART_DATA_AFTER", "MULTIPART_LF_LINE",
     "MULTIPART_MISSING_END", "MULTIPART_INVALID_QUOTING"}
)

# made from the headers alone: numbered apart from the request line, which changes more often
HEADERS_MADE = frozenset({"REQUEST_HEADERS", "REQUEST_HEADERS_NAMES", "REQUEST_COOKIES", "REQUEST_COOKIES_NAMES"})


# parts of the request line that stay when the query string changes: numbered by their own
# value, so what a rule found in them holds for requests with new argument values
OWN_NUMBER = frozenset({"REQUEST_METHOD", "REQUEST_PROTOCOL", "REQUEST_FILENAME", "REQUEST_BASENAME"})


def source(collection: str) -> str:
    """What a collection's content is numbered by: "headers" the headers, "" the rest of the
    head (`OWN_NUMBER`: itself), or itself (what the body processor made: argument names stay
    when values change)."""
    if collection in HEADERS_MADE:
        return "headers"
    if collection in HEAD_MADE and collection not in OWN_NUMBER:
        return ""
    return collection


def coarse_source(collection: str) -> str:
    """As `source`, with what the body processor made numbered as a whole ("body": head and
    body), and the head as a whole: fewer numbers to find when whole requests repeat."""
    if collection in BODY_MADE:
        return "body"
    return "" if collection in OWN_NUMBER else source(collection)


def head_key(req: HttpRequest) -> tuple[tuple[str, str], ...]:
    return (("", req.method), ("", req.uri), ("", req.protocol), *req.headers)


@dataclass(slots=True)
class Head:
    """What a request head makes: collections, scalars (less the connection's), the body processor."""

    collections: dict[str, Pairs]
    scalars: dict[str, str]
    processor: str | None


def header(headers: Pairs, name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@dataclass(slots=True)
class HeaderPart:
    """What the headers alone make. Parsed once per distinct set of headers (`Shared.head`): a
    client sends the same ones with every request line, which is what is mostly new."""

    headers: Pairs
    cookies: Pairs
    size: int  # what they add to FULL_REQUEST_LENGTH
    processor: str | None


def parse_headers(pairs: Pairs) -> HeaderPart:
    headers = list(pairs)
    names = [name.lower() for name, _ in headers]  # once: read for cookies and the content type
    cookies: Pairs = []
    for name, (_, value) in zip(names, headers, strict=True) if "cookie" in names else ():
        if name == "cookie":
            for piece in value.split(";"):
                piece = piece.strip()
                if not piece:
                    continue
                cname, _, cvalue = piece.partition("=")
                cookies.append((cname.strip(), cvalue.strip()))
    low = headers[names.index("content-type")][1].lower() if "content-type" in names else ""
    processor: str | None = None
    if low.startswith("application/x-www-form-urlencoded"):
        processor = "URLENCODED"
    elif low.startswith("multipart/form-data"):
        processor = "MULTIPART"
    elif low.startswith("application/json") or "+json" in low:
        processor = "JSON"
    elif low.startswith(("text/xml", "application/xml")) or "+xml" in low:
        processor = "XML"
    return HeaderPart(headers, cookies, sum([len(n) + len(v) + 4 for n, v in headers]), processor)


def parse_head(req: HttpRequest, part: HeaderPart | None = None) -> Head:
    """What the head makes; `part`: what its headers make, when known."""
    if part is None:
        part = parse_headers(req.headers)
    uri = req.uri
    path = uri
    if "://" in uri[:10]:  # absolute form
        rest = uri.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    filename, _, query = path.partition("?")
    filename = filename.partition("#")[0]
    basename = filename.rsplit("/", 1)[-1]
    args_get = bodies.parse_urlencoded(query)
    collections: dict[str, Pairs] = {
        "ARGS_GET": args_get,
        "ARGS_POST": [],
        "ARGS": list(args_get),
        "REQUEST_HEADERS": part.headers,
        "REQUEST_COOKIES": part.cookies,
        "FILES": [],
        "FILES_SIZES": [],
        "FILES_TMPNAMES": [],
        "FILES_TMP_CONTENT": [],
        "MULTIPART_PART_HEADERS": [],
        "XML": [],
        "ENV": [],
        "GEO": [],
        "RESPONSE_HEADERS": [],
    }
    line = f"{req.method} {uri} {req.protocol}" if req.protocol else f"{req.method} {uri}"
    scalars = {
        "REQUEST_METHOD": req.method,
        "REQUEST_URI": path,
        "REQUEST_URI_RAW": uri,
        "REQUEST_FILENAME": filename,
        "REQUEST_BASENAME": basename,
        "REQUEST_LINE": line,
        "REQUEST_PROTOCOL": req.protocol,
        "QUERY_STRING": query,
        "SERVER_ADDR": "127.0.0.1",
        "REQBODY_ERROR": "0",
        "REQBODY_PROCESSOR_ERROR": "0",
        "INBOUND_DATA_ERROR": "0",
        "OUTBOUND_DATA_ERROR": "0",
        "URLENCODED_ERROR": "0",
        "AUTH_TYPE": "",
        "REMOTE_USER": "",
        "REQUEST_BODY_LENGTH": "0",
        "FULL_REQUEST_LENGTH": str(len(line) + part.size),
        "ARGS_COMBINED_SIZE": str(sum([len(k) + len(v) for k, v in args_get])),
    }
    return Head(collections, scalars, part.processor)
