"""Load the CRS 3.3.4 go-ftw regression tests as requests with an expected outcome.

A stage whose output has `log_contains: id "N"` should be blocked (403) when rule N is at or
below the paranoia level that runs; `no_log_contains` stages should pass. Stages that expect a
status or a transport error test the web server, not the WAF, and are left out.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from portcullis.features.waf.transaction import HttpRequest

TESTS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "crs-3.3.4-tests"
_ID = re.compile(r'id "?(\d+)')


@dataclass
class Case:
    family: str
    title: str
    rule_id: int
    expect_block: bool  # log_contains (True) or no_log_contains (False)
    request: HttpRequest
    raw: bytes  # the request as bytes, for a socket client


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _latin1(text: str) -> str:
    # YAML gives unicode; on the wire it is UTF-8
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _from_raw(raw: bytes) -> tuple[HttpRequest, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, uri = parts[0], parts[1] if len(parts) > 1 else "/"
    protocol = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return HttpRequest(method, uri, protocol, headers, body), raw


def _build(inp: dict[str, Any]) -> tuple[HttpRequest, bytes]:
    if inp.get("encoded_request"):
        return _from_raw(base64.b64decode(inp["encoded_request"]))
    if inp.get("raw_request"):
        return _from_raw(_text(inp["raw_request"]).encode("utf-8"))
    method = _text(inp.get("method") or "GET")
    uri = _latin1(_text(inp.get("uri") or "/"))
    version = _text(inp.get("version") if "version" in inp else "HTTP/1.1")
    headers = [
        (_latin1(_text(k)), _latin1(_text(v)))
        for k, v in (inp.get("headers") or {}).items()
        if _text(k).lower() != "accept-charset"
    ]
    data = inp.get("data")
    body = b""
    if data is not None:
        text = "\r\n".join(map(_text, data)) + "\r\n" if isinstance(data, list) else _text(data)
        body = text.encode("utf-8", "surrogateescape")
    names = {k.lower() for k, _ in headers}
    if body and not inp.get("stop_magic"):
        if "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(len(body))))
        if "content-type" not in names:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    request = HttpRequest(method, uri, version, headers, body)
    line = f"{method} {uri} {version}".rstrip()
    raw = (line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1") + body
    return request, raw


def load_cases(directory: Path = TESTS_DIR) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*/*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc.get("tests") or []:
            for stage in test.get("stages") or []:
                stage = stage.get("stage", stage)
                out = stage.get("output") or {}
                if "log_contains" in out:
                    expect = True
                    text = _text(out["log_contains"])
                elif "no_log_contains" in out:
                    expect = False
                    text = _text(out["no_log_contains"])
                else:
                    continue
                m = _ID.search(text)
                if not m:
                    continue
                request, raw = _build(stage.get("input") or {})
                title = _text(test.get("test_title"))
                cases.append(Case(path.parent.name, title, int(m.group(1)), expect, request, raw))
    return cases
