"""Persistent collections (persist.py): `initcol` loads what earlier requests of the same key
left in IP, GLOBAL ...; `expirevar` and `deprecatevar` age it on the store's clock; the store
forgets idle records and keeps a bounded number. And the CRS's own use of them: a client caught
as a scanner is held as known-malicious on its next request when `do_reput_block` is set."""

from __future__ import annotations

import pytest

from portcullis.features.waf.loader import Waf, WafSettings
from portcullis.features.waf.persist import RECORD_TIMEOUT, CollectionStore
from portcullis.features.waf.transaction import HttpRequest, Transaction

COUNTER = r"""
SecAction "id:1,phase:1,pass,nolog,initcol:ip=%{remote_addr},initcol:global=global"
SecAction "id:2,phase:1,pass,nolog,setvar:ip.hits=+1,setvar:global.total=+1,expirevar:ip.hits=60"
SecRule IP:HITS "@gt 2" "id:3,phase:1,deny,status:429,msg:'too many requests from %{remote_addr}'"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waf_with_clock(rules: str) -> tuple[Waf, Clock]:
    waf = Waf.from_text(rules)
    clock = Clock()
    waf.ruleset.shared.stored.clock = clock
    return waf, clock


def run(waf: Waf, addr: str = "192.0.2.1") -> Transaction:
    return waf.evaluate(HttpRequest("GET", "/", headers=[("Host", "example.com")], remote_addr=addr))


def blocked_by(txn: Transaction) -> int | None:
    return txn.disruptive.rule_id if txn.disruptive is not None else None


def test_a_counter_carries_over_per_client_and_globally() -> None:
    waf, _ = waf_with_clock(COUNTER)
    assert [blocked_by(run(waf)) for _ in range(2)] == [None, None]
    other = run(waf, "198.51.100.9")  # its own record
    assert other.persistent["IP"] == {"hits": "1"} and blocked_by(other) is None
    third = run(waf)
    assert third.persistent["IP"]["hits"] == "3" and blocked_by(third) == 3
    assert third.disruptive is not None and third.disruptive.msg == "too many requests from 192.0.2.1"
    assert third.persistent["GLOBAL"] == {"total": "4"}  # every client's requests


def test_expirevar_forgets_a_variable_after_its_time() -> None:
    waf, clock = waf_with_clock(COUNTER)
    for _ in range(3):
        run(waf)
    clock.now += 59
    assert blocked_by(run(waf)) == 3  # hits 4, and its expiry starts over
    clock.now += 61
    fresh = run(waf)
    assert fresh.persistent["IP"] == {"hits": "1"} and blocked_by(fresh) is None
    assert fresh.persistent["GLOBAL"]["total"] == "5"  # no expirevar on it


def test_deprecatevar_takes_off_per_period_since_the_last_write() -> None:
    rules = r"""
SecAction "id:1,phase:1,pass,nolog,initcol:ip=%{remote_addr}"
SecRule REQUEST_URI "@streq /bad" "id:2,phase:1,pass,nolog,setvar:ip.score=+10"
SecAction "id:3,phase:1,pass,nolog,deprecatevar:ip.score=4/10"
"""
    waf, clock = waf_with_clock(rules)
    waf.evaluate(HttpRequest("GET", "/bad", headers=[("Host", "x")]))
    clock.now += 25  # two whole periods
    assert run(waf, "127.0.0.1").persistent["IP"] == {"score": "2"}
    clock.now += 100
    assert run(waf, "127.0.0.1").persistent["IP"] == {"score": "0"}  # never below 0


def test_an_idle_record_is_forgotten_and_the_store_is_bounded() -> None:
    waf, clock = waf_with_clock(COUNTER)
    run(waf)
    clock.now += RECORD_TIMEOUT + 1
    assert run(waf).persistent["IP"] == {"hits": "1"}
    store = CollectionStore(clock=clock, max_records=3)
    waf.ruleset.shared.stored = store
    for i in range(5):
        run(waf, f"203.0.113.{i}")
    # GLOBAL and the two most recent clients
    assert set(store.records) == {("IP", "203.0.113.3"), ("IP", "203.0.113.4"), ("GLOBAL", "global")}


def test_nothing_is_stored_without_initcol() -> None:
    waf, _ = waf_with_clock('SecAction "id:1,phase:1,pass,nolog,setvar:ip.hits=+1"')
    assert [run(waf).persistent["IP"] for _ in range(2)] == [{"hits": "1"}, {"hits": "1"}]
    assert waf.ruleset.shared.stored.records == {}


CRS = "/usr/share/modsecurity-crs"
crs_only = pytest.mark.skipif(not __import__("os").path.isdir(CRS), reason="needs Debian's modsecurity-crs")
BROWSER = [("Host", "shop.example.com"), ("User-Agent", "Mozilla/5.0"), ("Accept", "*/*")]
SCANNER = [("Host", "shop.example.com"), ("User-Agent", "Nikto/2.1.6"), ("Accept", "*/*")]


def rule_ids(txn: Transaction) -> set[int]:
    return {m.rule_id for m in txn.matches}


@crs_only
def test_crs_holds_a_scanner_as_known_malicious_on_its_next_request() -> None:
    settings = (("do_reput_block", "1"), ("reput_block_duration", "300"))
    waf = Waf.from_settings(WafSettings(crs=CRS, crs_settings=settings))
    first = waf.evaluate(HttpRequest("GET", "/", headers=SCANNER, remote_addr="192.0.2.7"))
    assert 913100 in rule_ids(first) and 910000 not in rule_ids(first)
    assert first.persistent["IP"]["reput_block_flag"] == "1"
    # the next request of that client is refused on its record before the scanner rules run
    second = waf.evaluate(HttpRequest("GET", "/", headers=SCANNER, remote_addr="192.0.2.7"))
    assert 910000 in rule_ids(second) and 913100 not in rule_ids(second)
    assert blocked_by(second) == 949100
    # another client (another address, another user agent: another record) is not
    assert blocked_by(waf.evaluate(HttpRequest("GET", "/", headers=BROWSER, remote_addr="192.0.2.8"))) is None


@crs_only
def test_the_crs_loads_the_client_record_only_when_a_rule_that_runs_reads_it() -> None:
    """Out of the box the CRS writes IP (913100 flags scanners) but reads it only with
    `do_reput_block` on: without it nothing is loaded or stored per request."""
    plain = Waf.from_settings(WafSettings(crs=CRS))
    assert plain.ruleset.shared.stored.folded_reads == frozenset()
    plain.evaluate(HttpRequest("GET", "/", headers=SCANNER, remote_addr="192.0.2.7"))
    assert plain.ruleset.shared.stored.records == {}
    held = Waf.from_settings(WafSettings(crs=CRS, crs_settings=(("do_reput_block", "1"),)))
    assert held.ruleset.shared.stored.folded_reads == frozenset({"IP"})


@crs_only
def test_crs_settings_widen_the_allowed_methods() -> None:
    delete = HttpRequest("DELETE", "/api/items/1", headers=BROWSER)
    plain = Waf.from_settings(WafSettings(crs=CRS))
    assert 911100 in rule_ids(plain.evaluate(delete)) and blocked_by(plain.evaluate(delete)) == 949110
    methods = (("allowed_methods", "GET HEAD POST OPTIONS PUT PATCH DELETE"),)
    widened = Waf.from_settings(WafSettings(crs=CRS, crs_settings=methods))
    assert blocked_by(widened.evaluate(delete)) is None
    assert 911100 in rule_ids(widened.evaluate(HttpRequest("TRACE", "/", headers=BROWSER)))


def test_crs_settings_in_the_config_file() -> None:
    from portcullis.config.errors import ConfigError
    from portcullis.config.loader import load_config_text
    from portcullis.features.waf.factory import settings_of

    template = """
listeners: [{name: web, listen: "127.0.0.1:18080"}]
upstreams: {app: {peers: [{url: "http://127.0.0.1:18081"}]}}
routes:
  - name: all
    match: {path_prefix: /}
    upstream: app
    filters:
      - type: waf
        crs_settings:
          {setting}
"""
    good = load_config_text(template.replace("{setting}", "allowed_methods: GET POST PUT\n          do_reput_block: 1"),
                            "gateway.yaml", ".")  # fmt: skip
    waf = good.routes[0].filters[0]
    assert settings_of(waf).crs_settings == (("allowed_methods", "GET POST PUT"), ("do_reput_block", "1"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as bad:
        load_config_text(template.replace("{setting}", 'allowed_methods: "GET\' POST"'), "gateway.yaml", ".")
    text = str(bad.value)
    assert "gateway.yaml:10: routes[0].filters[0].crs_settings:" in text and "quotes" in text
