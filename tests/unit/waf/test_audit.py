"""The WAF audit log: which values are secrets, inline masking, and the JSON line a blocked or
detected transaction leaves in the file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from portcullis.config.schema import WafFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Response, ResponseHead
from portcullis.engine.services import Services
from portcullis.features.registry import build_filter
from portcullis.features.waf.audit import MASK, is_secret, matched_data, scrub
from portcullis.features.waf.filter import WafAction
from portcullis.observability.log_file import acquire_shared, release_shared

RULES = [
    'SecRule ARGS|REQUEST_HEADERS|REQUEST_COOKIES "@contains attack" '
    '"id:100,phase:1,deny,severity:CRITICAL,msg:\'attack seen\'"',
    'SecRule ARGS:q "@contains pass" "id:101,phase:2,pass,msg:\'noted\'"',
    'SecRule RESPONSE_BODY "@contains stack trace" "id:400,phase:4,deny,msg:\'trace leaked\'"',
]


def test_secret_variables() -> None:
    for name in (
        "REQUEST_HEADERS:authorization", "REQUEST_HEADERS:Cookie", "REQUEST_COOKIES:sid", "ARGS:password",
        "ARGS_POST:json.user.passwd", "ARGS:api_key", "ARGS:access_token", "RESPONSE_HEADERS:set-cookie",
    ):  # fmt: skip
        assert is_secret(name), name
    for name in ("ARGS:q", "REQUEST_HEADERS:user-agent", "ARGS_NAMES:password", "REQUEST_COOKIES_NAMES:sid", "TX:0"):
        assert not is_secret(name), name


def test_inline_secrets_are_masked() -> None:
    assert scrub("a=1&password=hunter2&b=2") == f"a=1&password={MASK}&b=2"
    assert scrub('{"user": "bob", "api_key": "k-123", "n": 1}') == f'{{"user": "bob", "api_key": "{MASK}", "n": 1}}'
    assert scrub("Authorization: Bearer abc.def.ghi") == f"Authorization: Bearer {MASK}"
    assert scrub("sid=1; session_token=xyz") == f"sid=1; session_token={MASK}"
    assert scrub("plain text") == "plain text"


def test_matched_data_is_masked_and_cut() -> None:
    assert matched_data("REQUEST_HEADERS:authorization", "Basic dXNlcjpwYXNz") == MASK
    long = matched_data("ARGS:q", "x" * 1000)
    assert len(long) < 200 and long.endswith("...")
    # the operator's match, when it lies outside any secret of the value
    assert matched_data("REQUEST_BODY", "a=1&q=' or 1=1--&b=2", "' or 1=1") == "' or 1=1"
    assert matched_data("REQUEST_BODY", "user=bob&password=' or 1=1", "' or 1=1") == MASK
    assert matched_data("ARGS:q", "UNION SELECT x", "union select") == "union select"
    assert matched_data("ARGS:q", "1' OR '1'='1", "s&sos") == "1' OR '1'='1"  # a fingerprint: the value


def ctx(target: bytes, headers: list[tuple[bytes, bytes]]) -> RequestContext:
    c = RequestContext(
        method="GET", target=target, headers=[(b"Host", b"example.com"), *headers], version="1.1",
        host="example.com", client_ip="203.0.113.7", client_port=5000, scheme="http", listener="web", started=0.0,
    )  # fmt: skip
    c.request_id = "rid-1"
    return c


def started(path: Path, **extra: Any) -> WafAction:
    config = WafFilter.model_validate({"type": "waf", "rules": RULES, "audit_log": str(path), **extra})
    flt = build_filter(config, Services())
    assert isinstance(flt, WafAction)
    asyncio.run(flt.start(Services()))
    return flt


def lines(flt: WafAction, path: Path) -> list[dict[str, Any]]:
    asyncio.run(flt.close())  # the last holder closes (and flushes) the file
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_blocked_request_line_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    flt = started(path)
    secrets = [(b"Authorization", b"Bearer tok-SECRET-1"), (b"Cookie", b"sid=attack-SECRET-2")]
    c = ctx(b"/login?user=bob&password=attack-SECRET-3", secrets)
    answer = flt.on_request(c)
    assert isinstance(answer, Response) and answer.status == 403
    assert flt.on_request(ctx(b"/fine", [])) is None
    text = path.read_text() if path.exists() else ""
    [doc] = lines(flt, path)
    assert "SECRET" not in text + json.dumps(doc)
    assert doc["request_id"] == "rid-1" and doc["client"] == "203.0.113.7" and doc["method"] == "GET"
    assert doc["uri"] == f"/login?user=bob&password={MASK}"
    assert doc["action"] == "blocked" and doc["status"] == 403 and doc["phase"] == 1
    assert doc["anomaly_score"] == {"inbound": 0, "outbound": 0}
    assert doc["decision"].startswith("waf: blocked by 100 (attack seen)")
    [rule] = doc["rules"]
    assert rule["id"] == 100 and rule["msg"] == "attack seen" and rule["severity"] == "CRITICAL"
    assert rule["var"] in ("ARGS:password", "REQUEST_COOKIES:sid") and rule["data"] == MASK


def test_detect_mode_and_response_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    flt = started(path, mode="detect", response_inspection=True)
    c = ctx(b"/?q=attack", [])
    assert flt.on_request(c) is None
    c = ctx(b"/?q=passage", [])
    assert flt.on_request(c) is None
    flt.on_upstream_response(c, ResponseHead(500, [(b"Content-Type", b"text/plain")]))
    assert flt.on_response_body(c, b"a stack trace", True) == b"a stack trace"
    first, second = lines(flt, path)
    assert first["action"] == "detected" and first["status"] is None and first["rules"][0]["data"] == "attack"
    assert second["phase"] == 4 and second["action"] == "detected"
    assert [r["id"] for r in second["rules"]] == [101, 400]  # the whole transaction's matches


def test_shared_file_per_path(tmp_path: Path) -> None:
    path = str(tmp_path / "a.log")
    one, two = acquire_shared(path), acquire_shared(path)
    assert one is two
    one.write_line("x\n")
    release_shared(one)
    assert not (tmp_path / "a.log").read_text()  # still open, buffered
    release_shared(two)
    assert (tmp_path / "a.log").read_text() == "x\n"
