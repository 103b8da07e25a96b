"""Response inspection (phases 3 and 4) in the waf filter: the response variables, holding and
streaming the inspected body, the body limit, which bodies are read (gzip, deflate and br ones
inflated, never past the limit), the outbound threshold, detect mode, and that routes without
the option get no response hooks at all."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest

from portcullis.config.schema import WafFilter
from portcullis.engine.chain import compile_chain
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Refuse
from portcullis.engine.messages import ResponseHead
from portcullis.engine.services import Services
from portcullis.features.registry import build_filter
from portcullis.features.waf.filter import WafAction
from portcullis.features.waf.inflate import Inflater
from portcullis.features.waf.loader import Waf
from portcullis.features.waf.response import WafResponseAction
from portcullis.features.waf.transaction import HttpRequest
from portcullis.observability.stats import WorkerStats

RULES = [
    'SecRule RESPONSE_HEADERS:X-Build "@beginsWith internal" "id:300,phase:3,deny,msg:\'internal build header\'"',
    'SecRule RESPONSE_BODY "@contains SQL syntax" "id:400,phase:4,deny,msg:\'SQL error leaked\'"',
    'SecRule RESPONSE_STATUS "@streq 599" "id:401,phase:4,deny,msg:\'odd status\'"',
    'SecRule ARGS:probe "@streq 1" "id:100,phase:1,deny,msg:\'probe\'"',
]
HTML = [(b"Content-Type", b"text/html; charset=utf-8")]


def waf(**extra: Any) -> WafResponseAction:
    config = WafFilter.model_validate({"type": "waf", "rules": RULES, "response_inspection": True, **extra})
    flt = build_filter(config, Services())
    assert isinstance(flt, WafResponseAction)
    return flt


def ctx(target: bytes = b"/", method: str = "GET") -> RequestContext:
    return RequestContext(
        method=method, target=target, headers=[(b"Host", b"example.com")], version="1.1", host="example.com",
        client_ip="203.0.113.7", client_port=5000, scheme="http", listener="web", started=0.0,
    )  # fmt: skip


def started(flt: WafAction, target: bytes = b"/", method: str = "GET") -> RequestContext:
    c = ctx(target, method)
    assert flt.on_request(c) is None
    return c


def refused(call: Any, *args: Any) -> Refuse:
    with pytest.raises(Refuse) as info:
        call(*args)
    return info.value


def test_routes_without_the_option_get_no_response_hooks() -> None:
    plain = build_filter(WafFilter.model_validate({"type": "waf", "rules": RULES}), Services())
    assert type(plain) is WafAction
    chain = compile_chain([plain])
    assert not chain.on_upstream_response and not chain.on_response_body and not chain.holds_response
    chain = compile_chain([waf()])
    assert chain.on_upstream_response and chain.on_response_body and chain.holds_response


def test_option_without_response_rules_stays_request_only() -> None:
    config = WafFilter.model_validate({"type": "waf", "rules": RULES[3:], "response_inspection": True})
    assert type(build_filter(config, Services())) is WafAction


def test_response_variables() -> None:
    rules = (
        'SecRule RESPONSE_STATUS "@streq 404" "id:1,phase:3,pass,msg:status"\n'
        'SecRule RESPONSE_PROTOCOL "@streq HTTP/1.1" "id:2,phase:3,pass,msg:protocol"\n'
        'SecRule RESPONSE_HEADERS_NAMES "@streq X-One" "id:3,phase:3,pass,msg:names"\n'
        'SecRule RESPONSE_CONTENT_TYPE "@beginsWith text/" "id:4,phase:3,pass,msg:ctype"\n'
        'SecRule RESPONSE_BODY "@rx ^<p>" "id:5,phase:4,pass,msg:body"\n'
        'SecRule RESPONSE_CONTENT_LENGTH "@eq 16" "id:6,phase:3,pass,msg:length"\n'
    )
    w = Waf.from_text(rules)
    txn = w.begin(HttpRequest("GET", "/"))
    txn.load_response_head(404, "HTTP/1.1", [("Content-Type", "text/html"), ("X-One", "1"), ("Content-Length", "16")])
    w.phase(txn, 3)
    txn.load_response_body(b"<p>not found</p>")
    w.phase(txn, 4)
    assert [m.rule_id for m in txn.matches] == [1, 2, 3, 4, 6, 5]
    assert [m.phase for m in txn.matches] == [3, 3, 3, 3, 3, 4]
    chunked = w.begin(HttpRequest("GET", "/"))
    chunked.load_response_head(200, "HTTP/1.1", [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked")])
    w.phase(chunked, 3)
    assert 6 not in [m.rule_id for m in chunked.matches]


def test_phase3_block_replaces_the_response() -> None:
    flt = waf()
    c = started(flt)
    refusal = refused(flt.on_upstream_response, c, ResponseHead(200, [*HTML, (b"X-Build", b"internal-42")]))
    assert refusal.response.status == 403
    assert c.decision == "waf: blocked response by 300 (internal build header), outbound score 0"


def test_hold_mode_keeps_the_body_until_phase4() -> None:
    flt = waf()
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
    assert flt.on_response_body(c, b"<p>hello ", False) == b""
    assert flt.on_response_body(c, b"world</p>", False) == b""
    assert flt.on_response_body(c, b"", True) == b"<p>hello world</p>"
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
    assert flt.on_response_body(c, b"<p>You have an error in your SQL", False) == b""
    refusal = refused(flt.on_response_body, c, b" syntax</p>", True)
    assert refusal.response.status == 403 and "400" in refusal.reason


def test_the_limit_runs_phase4_early_and_the_rest_streams() -> None:
    flt = waf(max_response_body=10)
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
    assert flt.on_response_body(c, b"0123", False) == b""
    assert flt.on_response_body(c, b"456789ab", False) == b"0123456789ab"  # 10 bytes seen: phase 4 ran
    assert flt.on_response_body(c, b"SQL syntax", False) == b"SQL syntax"  # past the limit: not inspected
    assert flt.on_response_body(c, b"", True) == b""
    assert c.decision is None


def test_stream_mode_passes_bytes_and_flags_a_late_block() -> None:
    flt = waf(response_body_mode="stream")
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
    assert flt.on_response_body(c, b"<p>first</p>", False) == b"<p>first</p>"
    assert flt.on_response_body(c, b"SQL syntax", False) == b"SQL syntax"
    refusal = refused(flt.on_response_body, c, b"", True)
    assert refusal.response.status == 403  # the engine cuts the connection: bytes were sent


def test_only_listed_uncompressed_types_are_read() -> None:
    flt = waf()
    unread = (
        [(b"Content-Type", b"application/octet-stream")],
        [*HTML, (b"Content-Encoding", b"zstd")],  # a coding not read
        [*HTML, (b"Content-Encoding", b"gzip, br")],  # nor several
        [],
    )
    for headers in unread:
        c = started(flt)
        flt.on_upstream_response(c, ResponseHead(200, headers))
        assert flt.on_response_body(c, b"SQL syntax", False) == b"SQL syntax"
        assert flt.on_response_body(c, b"", True) == b""
    flt = waf(response_body_types=["application/json"])
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, [(b"Content-Type", b"application/json")]))
    assert flt.on_response_body(c, b'{"e": "SQL syntax"}', False) == b""
    refused(flt.on_response_body, c, b"", True)


def pieces(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def through(flt: WafResponseAction, c: RequestContext, body: list[bytes]) -> bytes:
    out = b"".join(flt.on_response_body(c, piece, False) for piece in body)
    return out + flt.on_response_body(c, b"", True)


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress),
    ],
)
def test_a_compressed_body_is_inflated_for_the_rules_and_forwarded_as_it_came(coding: str, compress: Any) -> None:
    flt = waf()
    head = [*HTML, (b"Content-Encoding", coding.encode())]
    clean = compress(b"<p>all is well</p>" * 50)
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    assert through(flt, c, pieces(clean)) == clean  # the compressed bytes, unchanged
    leak = compress(b"<p>You have an error in your SQL syntax near line 1</p>")
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    refusal = refused(through, flt, c, pieces(leak))
    assert refusal.response.status == 403 and "400" in refusal.reason


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("br", brotli.compress)])
def test_inflating_stops_at_the_inspected_size(coding: str, compress: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small body that expands to megabytes (a decompression bomb) is read only as far as
    max_response_body: what lies past it is not inflated, nor seen."""
    flt = waf(max_response_body=4096)
    head = [*HTML, (b"Content-Encoding", coding.encode())]
    bomb = compress(b"\0" * 20_000_000 + b"SQL syntax")
    assert len(bomb) < 50_000
    made: list[int] = []  # the size of every piece of text the inflater made
    original = Inflater.inflate

    def counted(self: Inflater, piece: bytes, room: int) -> bytes:
        out = original(self, piece, room)
        made.append(len(out))
        return out

    monkeypatch.setattr(Inflater, "inflate", counted)
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    assert through(flt, c, pieces(bomb, 8192)) == bomb
    assert c.decision is None
    assert sum(made) == 4096  # 20 MB of text in there, 4 KiB of it made
    early = compress(b"SQL syntax" + b"\0" * 20_000_000)
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    refused(through, flt, c, pieces(early, 8192))


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("br", brotli.compress)])
def test_a_body_that_does_not_inflate_passes_on_what_could_be_read(coding: str, compress: Any) -> None:
    flt = waf()
    head = [*HTML, (b"Content-Encoding", coding.encode())]
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    assert through(flt, c, [b"not compressed at all, SQL syntax"]) == b"not compressed at all, SQL syntax"
    text = b"<p>SQL syntax</p>" + bytes(range(256)) * 64  # (not all zeros: it must not shrink to nothing)
    whole = compress(text)
    broken = whole[: len(whole) // 2] + b"garbage!" * 3
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(head)))
    refused(through, flt, c, pieces(broken, 8))  # the leak came (in an earlier piece) before the damage


def test_stream_mode_inflates_too() -> None:
    flt = waf(response_body_mode="stream")
    leak = gzip.compress(b"<p>first</p>" + b"<p>SQL syntax</p>")
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, [*HTML, (b"Content-Encoding", b"gzip")]))
    assert flt.on_response_body(c, leak[:10], False) == leak[:10]
    assert flt.on_response_body(c, leak[10:], False) == leak[10:]
    refused(flt.on_response_body, c, b"", True)


def test_phase4_without_a_body_runs_on_the_head() -> None:
    flt = waf()
    c = started(flt)
    refusal = refused(flt.on_upstream_response, c, ResponseHead(599, [(b"Content-Type", b"image/png")]))
    assert refusal.response.status == 403
    c = started(flt, method="HEAD")
    refused(flt.on_upstream_response, c, ResponseHead(599, list(HTML)))


def test_outbound_threshold_from_the_config() -> None:
    scoring = [
        'SecRule RESPONSE_BODY "@contains secret" "id:950001,phase:4,pass,msg:\'leak\',setvar:tx.outbound_score=+4"',
        'SecRule TX:OUTBOUND_SCORE "@ge %{tx.outbound_anomaly_score_threshold}" '
        '"id:959100,phase:4,deny,msg:\'Outbound Anomaly Score Exceeded\'"',
    ]

    def verdict(threshold: int) -> bool:
        config = WafFilter.model_validate(
            {"type": "waf", "rules": scoring, "response_inspection": True,
             "anomaly_threshold": {"outbound": threshold}}
        )  # fmt: skip
        flt = build_filter(config, Services())
        c = started(flt)
        flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
        try:
            flt.on_response_body(c, b"a secret", True)
        except Refuse:
            return True
        return False

    assert verdict(4) is True
    assert verdict(5) is False


def test_detect_mode_records_and_lets_through() -> None:
    stats = WorkerStats()
    config = WafFilter.model_validate({"type": "waf", "rules": RULES, "response_inspection": True, "mode": "detect"})
    services = Services()
    services.get_or_create(WorkerStats, "stats", lambda: stats)
    flt = build_filter(config, services)
    c = started(flt)
    flt.on_upstream_response(c, ResponseHead(200, list(HTML)))
    assert flt.on_response_body(c, b"SQL syntax", True) == b"SQL syntax"
    assert c.decision == "waf: detected response 400 (SQL error leaked), outbound score 0"
    assert stats.waf_detected == {"": 1} and stats.waf_blocked == {}
    assert stats.waf_rule_matches == {("", "400"): 1}


def test_a_detected_request_ends_the_evaluation() -> None:
    flt = waf(mode="detect")
    c = started(flt, b"/?probe=1")
    assert c.decision is not None and c.decision.startswith("waf: detected 100")
    flt.on_upstream_response(c, ResponseHead(200, [*HTML, (b"X-Build", b"internal")]))
    assert flt.on_response_body(c, b"SQL syntax", True) == b"SQL syntax"
    assert c.decision.startswith("waf: detected 100")
