"""The WAF filter: phase 1 rules on the request head, phase 2 on the complete body.

The compiled rule set is shared (and cached by settings, so routes and reloads with the same
WAF config compile it once); the per-request `Transaction` lives in `ctx.vars["waf"]`.
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

from portcullis.config.errors import ConfigError, ConfigIssue
from portcullis.config.schema import WafFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.messages import Response
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services
from portcullis.features.waf.loader import Exclusion, Waf, WafSettings, describe
from portcullis.features.waf.seclang import SecLangError
from portcullis.features.waf.transaction import HttpRequest, Transaction

log = logging.getLogger("portcullis.waf")

_CACHE: dict[WafSettings, Waf] = {}
_LOCK = threading.Lock()


def compiled(settings: WafSettings) -> Waf:
    with _LOCK:
        waf = _CACHE.get(settings)
        if waf is None:
            waf = _CACHE[settings] = Waf.from_settings(settings)
        return waf


class _State:
    __slots__ = ("body", "done", "size", "truncated", "txn")

    def __init__(self, txn: Transaction) -> None:
        self.txn = txn
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.done = False


def http_request(ctx: RequestContext) -> HttpRequest:
    version = ctx.version if ctx.version.startswith("HTTP/") else f"HTTP/{ctx.version}"
    return HttpRequest(
        method=ctx.method,
        uri=ctx.target.decode("latin-1"),
        protocol=version,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in ctx.headers],
        remote_addr=ctx.client_ip,
        remote_port=ctx.client_port,
        server_name=ctx.host,
    )


class WafAction(Filter):
    kind: ClassVar[str] = "waf"
    phase: ClassVar[Phase] = Phase.INSPECT
    needs_request_body: ClassVar[bool] = True

    def __init__(self, config: WafFilter, waf: Waf) -> None:
        self.waf = waf
        self.block = config.mode == "block"
        self.max_body = config.max_body
        self.reject_over_limit = config.on_body_limit == "reject"
        self.status = config.status
        self.phase1 = 1 in waf.request_phases
        self.phase2 = 2 in waf.request_phases

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        txn = self.waf.begin(http_request(ctx))
        if self.phase1:
            self.waf.phase(txn, 1)
            if txn.disruptive is not None:
                return self._verdict(ctx, txn)
        if not ctx.body_pending:
            return self._finish(ctx, txn, b"")
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["waf"] = _State(txn)
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> Response | None:
        state = ctx.vars.get("waf") if ctx.vars else None
        if not isinstance(state, _State) or state.done:
            return None
        if chunk and not state.truncated:
            room = self.max_body - state.size
            if len(chunk) > room:
                if self.reject_over_limit:
                    state.done = True
                    ctx.decision = f"waf: request body over {self.max_body} bytes"
                    return Response(413, [(b"Content-Type", b"text/plain")], b"request body too large\n")
                state.body.append(chunk[:room])
                state.size = self.max_body
                state.truncated = True
            else:
                state.body.append(chunk)
                state.size += len(chunk)
        if not end:
            return None
        state.done = True
        return self._finish(ctx, state.txn, b"".join(state.body))

    def _finish(self, ctx: RequestContext, txn: Transaction, body: bytes) -> Response | None:
        if self.phase2:
            txn.load_body(body)
            self.waf.phase(txn, 2)
        if txn.disruptive is not None:
            return self._verdict(ctx, txn)
        return None

    def _verdict(self, ctx: RequestContext, txn: Transaction) -> Response | None:
        what = describe(txn)
        ids = ",".join(str(m.rule_id) for m in txn.matches)
        if self.block:
            ctx.decision = f"waf: blocked by {what}"
            log.info("waf blocked %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
            return Response(self.status, [(b"Content-Type", b"text/plain")], b"request blocked by the WAF\n")
        ctx.decision = f"waf: detected {what}"
        log.info("waf detected %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
        return None


def settings_of(config: WafFilter) -> WafSettings:
    return WafSettings(
        crs=config.crs,
        paranoia=config.paranoia,
        inbound_threshold=config.anomaly_threshold.inbound,
        outbound_threshold=config.anomaly_threshold.outbound,
        rules=tuple(config.rules),
        rule_files=tuple(config.rule_files),
        exclusions=tuple(Exclusion(e.rule_id, e.tag, e.target) for e in config.exclusions),
    )


def build(config: WafFilter, services: Services) -> Filter:
    try:
        waf = compiled(settings_of(config))
    except (SecLangError, OSError) as exc:
        raise ConfigError([ConfigIssue("<waf>", 0, "waf", str(exc))]) from None
    return WafAction(config, waf)
