"""The WAF filter: phase 1 rules on the request head, phase 2 on the complete body, and what a
verdict leaves behind (the decision, the metrics, the audit log).

The compiled rule set is shared (see `factory.py`); the per-request `Transaction` lives in
`ctx.vars["waf"]` when a later hook needs it. Response inspection is `response.py`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from portcullis.config.schema import WafFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Filter, RequestOutcome
from portcullis.engine.messages import Response
from portcullis.engine.phases import Phase
from portcullis.engine.services import Services
from portcullis.features.waf.audit import audit_line
from portcullis.features.waf.inflate import Inflater
from portcullis.features.waf.loader import Waf, describe, inbound_score, outbound_score
from portcullis.features.waf.request import HttpRequest
from portcullis.features.waf.transaction import Transaction
from portcullis.observability.log_file import LogFile, acquire_shared, release_shared
from portcullis.observability.stats import WorkerStats

log = logging.getLogger("portcullis.waf")

BLOCKED_BODY = b"request blocked by the WAF\n"


class State:
    """What a transaction carries between hooks (in `ctx.vars["waf"]`)."""

    __slots__ = (
        "body",
        "decoder",
        "done",
        "held",
        "inbound",
        "inspect",
        "plain",
        "response_done",
        "response_start",
        "sent",
        "size",
        "truncated",
        "txn",
    )

    def __init__(self, txn: Transaction) -> None:
        self.txn = txn
        # the request body, until phase 2
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.done = False
        # the response (response.py)
        self.inbound = 0  # the inbound score when the request phases ended
        self.response_start = 0  # the first match of the response phases
        self.inspect = False  # the response body is read for phase 4
        self.held: list[bytes] = []  # response body bytes seen (held, in hold mode)
        self.decoder: Inflater | None = None  # a compressed body (inflate.py): what inflates it for phase 4
        self.plain: list[bytes] = []  # what it inflated to, held for phase 4 (hold mode)
        self.sent = False  # response body bytes were let through
        self.response_done = True  # phase 4 has run (or will not)


def state_of(ctx: RequestContext) -> State | None:
    state = ctx.vars.get("waf") if ctx.vars else None
    return state if isinstance(state, State) else None


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

    def __init__(self, config: WafFilter, waf: Waf, stats: WorkerStats | None = None) -> None:
        self.waf = waf
        self.block = config.mode == "block"
        self.max_body = config.max_body
        self.reject_over_limit = config.on_body_limit == "reject"
        self.status = config.status
        self.phase1 = 1 in waf.request_phases
        self.phase2 = 2 in waf.request_phases
        self.stats = stats
        self.audit_path = config.audit_log
        self.audit: LogFile | None = None
        self.keeps_state = False
        """The transaction outlives the request hooks (the response side reads it)."""

    async def start(self, services: Services) -> None:
        if self.audit_path is not None and self.audit is None:
            self.audit = acquire_shared(self.audit_path)

    async def close(self) -> None:
        if self.audit is not None:
            release_shared(self.audit)
            self.audit = None

    # ------------------------------------------------------------------ request
    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        txn = self.waf.begin(http_request(ctx))
        if self.phase1:
            self.waf.phase(txn, 1)
            if txn.disruptive is not None:
                return self._verdict(ctx, txn)
        if ctx.body_pending or self.keeps_state:
            if ctx.vars is None:
                ctx.vars = {}
            ctx.vars["waf"] = State(txn)
        if not ctx.body_pending:
            return self._finish(ctx, txn, b"")
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> Response | None:
        state = state_of(ctx)
        if state is None or state.done:
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
        body = b"".join(state.body)
        state.body = []
        return self._finish(ctx, state.txn, body)

    def _finish(self, ctx: RequestContext, txn: Transaction, body: bytes) -> Response | None:
        if self.phase2:
            txn.load_body(body)
            self.waf.phase(txn, 2)
        if txn.disruptive is not None:
            return self._verdict(ctx, txn)
        self.count(ctx, txn)
        if self.keeps_state:
            state = state_of(ctx)
            if state is not None:
                state.inbound = inbound_score(txn)
                state.response_start = len(txn.matches)
        return None

    def _verdict(self, ctx: RequestContext, txn: Transaction) -> Response | None:
        what = describe(txn)
        ids = ",".join(str(m.rule_id) for m in txn.matches)
        phase = txn.disruptive.phase if txn.disruptive is not None else 0
        if self.block:
            ctx.decision = f"waf: blocked by {what}"
            log.info("waf blocked %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
            self.report(ctx, txn, phase, "blocked", self.status, inbound_score(txn))
            return Response(self.status, [(b"Content-Type", b"text/plain")], BLOCKED_BODY)
        ctx.decision = f"waf: detected {what}"
        log.info("waf detected %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
        self.report(ctx, txn, phase, "detected", None, inbound_score(txn))
        return None

    # ------------------------------------------------------------------ what a verdict leaves
    def count(self, ctx: RequestContext, txn: Transaction) -> None:
        """Count the matches not counted yet, by rule id."""
        matches = txn.matches
        if len(matches) <= txn.reported or self.stats is None:
            return
        route = ctx.route.name if ctx.route is not None else ""
        for match in matches[txn.reported :]:
            if match.rule_id:
                self.stats.waf_match(route, match.rule_id)
        txn.reported = len(matches)

    def report(
        self, ctx: RequestContext, txn: Transaction, phase: int, action: str, status: int | None, inbound: int
    ) -> None:
        """A verdict: metrics and the audit line. `action`: blocked, connection_cut or detected."""
        self.count(ctx, txn)
        if self.stats is not None:
            self.stats.waf_verdict(ctx.route.name if ctx.route is not None else "", action != "detected")
        if self.audit is not None:
            line = audit_line(
                ctx, txn.matches, phase=phase, action=action, status=status, inbound=inbound,
                outbound=outbound_score(txn), decision=ctx.decision or "",
            )  # fmt: skip
            self.audit.write_line(line)
