"""The `waf` filter: config validation, phase 1 on the head, phase 2 on the buffered body,
the decision, detect mode, the body limit, the chain's body hold flag."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from portcullis.config.errors import ConfigError
from portcullis.config.schema import FilterConfig, WafFilter
from portcullis.engine.chain import compile_chain
from portcullis.engine.context import RequestContext
from portcullis.engine.messages import Response
from portcullis.engine.services import Services
from portcullis.features.registry import build_filter
from portcullis.features.waf.factory import build
from portcullis.features.waf.filter import WafAction

RULES = [
    'SecRule ARGS "@streq attack" "id:100,phase:2,deny,msg:\'attack in args\',severity:CRITICAL"',
    'SecRule REQUEST_HEADERS:X-Bad "@streq 1" "id:101,phase:1,deny,msg:\'bad header\'"',
]


def waf(**extra: Any) -> WafAction:
    config = WafFilter.model_validate({"type": "waf", "rules": RULES, **extra})
    flt = build_filter(config, Services())
    assert isinstance(flt, WafAction)
    return flt


def ctx(
    target: bytes = b"/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> RequestContext:
    c = RequestContext(
        method=method,
        target=target,
        headers=[(b"Host", b"example.com"), *(headers or [])],
        version="1.1",
        host="example.com",
        client_ip="203.0.113.7",
        client_port=5000,
        scheme="http",
        listener="web",
        started=0.0,
    )
    c.body_pending = any(k == b"Content-Length" and v != b"0" for k, v in headers or ())  # the exchange sets it
    return c


def test_config_union_and_defaults() -> None:
    config = TypeAdapter(FilterConfig).validate_python({"type": "waf"})
    assert isinstance(config, WafFilter)
    assert config.paranoia == 1 and config.mode == "block" and config.max_body == 128 * 1024
    assert config.anomaly_threshold.inbound == 5 and config.anomaly_threshold.outbound == 4
    assert WafFilter.model_validate({"type": "waf", "max_body": "1KiB"}).max_body == 1024


@pytest.mark.parametrize(
    "bad",
    [
        {"crs": "/no/such/dir"},
        {"paranoia": 5},
        {"mode": "maybe"},
        {"exclusions": [{"target": "ARGS:x"}]},
        {"unknown": 1},
    ],
)
def test_config_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WafFilter.model_validate({"type": "waf", **bad})


def test_bad_rules_are_a_config_error() -> None:
    bad = ['SecRule ARGS "@nosuch" "id:1"']
    with pytest.raises(ValidationError, match="unknown operator @nosuch"):
        WafFilter.model_validate({"type": "waf", "rules": bad})
    # and when the filter is built from a config that skipped validation (made in code)
    with pytest.raises(ConfigError):
        build(WafFilter.model_construct(type="waf", rules=bad), Services())


def test_clean_get_passes_and_attack_blocks_with_decision() -> None:
    flt = waf()
    assert flt.on_request(ctx(b"/?a=fine")) is None
    c = ctx(b"/?a=attack")
    answer = flt.on_request(c)
    assert isinstance(answer, Response) and answer.status == 403
    assert c.decision == "waf: blocked by 100 (attack in args), score 0"


def test_phase1_blocks_on_head() -> None:
    c = ctx(headers=[(b"X-Bad", b"1"), (b"Content-Length", b"10")], method="POST")
    answer = WafAction.on_request(waf(), c)
    assert isinstance(answer, Response) and answer.status == 403 and c.decision is not None


def test_body_is_buffered_and_inspected_at_end() -> None:
    flt = waf()
    head = [(b"Content-Type", b"application/x-www-form-urlencoded"), (b"Content-Length", b"8")]
    c = ctx(method="POST", headers=head)
    assert flt.on_request(c) is None
    assert flt.on_request_body(c, b"a=att", False) is None
    answer = flt.on_request_body(c, b"ack", True)
    assert isinstance(answer, Response) and answer.status == 403


def test_detect_mode_records_only() -> None:
    flt = waf(mode="detect")
    c = ctx(b"/?a=attack")
    assert flt.on_request(c) is None
    assert c.decision is not None and c.decision.startswith("waf: detected 100")


def test_body_limit_reject_and_pass() -> None:
    head = [(b"Content-Type", b"application/x-www-form-urlencoded"), (b"Content-Length", b"100")]
    flt = waf(max_body=10)
    c = ctx(method="POST", headers=head)
    flt.on_request(c)
    answer = flt.on_request_body(c, b"a=" + b"x" * 20, False)
    assert isinstance(answer, Response) and answer.status == 413
    lenient = waf(max_body=7, on_body_limit="pass")
    c = ctx(method="POST", headers=head)
    lenient.on_request(c)
    assert lenient.on_request_body(c, b"a=attack&b=zzzzzz", True) is None  # only "a=attac" is seen
    lenient = waf(max_body=8, on_body_limit="pass")
    c = ctx(method="POST", headers=head)
    lenient.on_request(c)
    assert isinstance(lenient.on_request_body(c, b"a=attack&b=zzzzzz", True), Response)


def test_same_settings_share_one_compiled_rule_set() -> None:
    assert waf().waf is waf().waf


def test_chain_holds_body_only_with_the_waf() -> None:
    assert compile_chain([waf()]).holds_body
    assert not compile_chain([]).holds_body
