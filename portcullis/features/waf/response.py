"""Response inspection: ModSecurity phases 3 (the response head) and 4 (the body), where the CRS
runs its data-leakage rules (RESPONSE-950..959) and its outbound anomaly score.

Phase 3 runs before anything of the peer's response has been sent, so a block there is a clean
answer. Phase 4 runs once, when `max_response_body` bytes have been seen or the body ended:
in `hold` mode those bytes wait for it (the engine holds the head too, see
`Filter.holds_response`), so a block is still a clean answer; in `stream` mode they flow on as
they come, and a block after some were sent cuts the connection (the engine does that on
`Refuse`). A gzip, deflate or br body is inflated for the rules (inflate.py) and forwarded as it
came. A body that is not inspected (its type is not listed, another coding, or there is none)
has phase 4 run at once, on the head alone.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from portcullis.config.schema import WafFilter
from portcullis.engine.context import RequestContext
from portcullis.engine.filter import Refuse
from portcullis.engine.messages import Response, ResponseHead
from portcullis.features.waf.filter import State, WafAction, state_of
from portcullis.features.waf.inflate import Inflater, body_coding
from portcullis.features.waf.loader import Waf, describe
from portcullis.observability.stats import WorkerStats

log = logging.getLogger("portcullis.waf")

# the peer's protocol: upstream connections speak HTTP/1.1
PROTOCOL = "HTTP/1.1"


class WafResponseAction(WafAction):
    """The waf filter with `response_inspection: true` (a class of its own, so routes without it
    do not run these hooks at all)."""

    holds_response: ClassVar[bool] = True

    def __init__(self, config: WafFilter, waf: Waf, stats: WorkerStats | None = None) -> None:
        super().__init__(config, waf, stats)
        self.keeps_state = True
        self.phase3 = 3 in waf.response_phases
        self.phase4 = 4 in waf.response_phases
        self.max_response_body = config.max_response_body
        self.body_types = frozenset(config.response_body_types)
        self.stream = config.response_body_mode == "stream"

    def on_upstream_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        state = state_of(ctx)
        if state is None:
            return
        txn = state.txn
        if txn.disruptive is not None or txn.allowed:
            return  # a detected request: evaluation stopped where a block would have
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        txn.load_response_head(head.status, PROTOCOL, headers)
        if self.phase3 and self.waf.phase(txn, 3):
            self._verdict_response(ctx, state)
            return
        no_body = ctx.method == "HEAD" or head.status in (204, 304)
        coding = body_coding(head.get(b"content-encoding"))  # None: a coding we do not read
        if self.phase4 and not no_body and coding is not None and self._inspectable(head):
            state.inspect = True
            state.response_done = False
            if coding:
                state.decoder = Inflater(coding)
        else:
            self._phase4(ctx, state)

    def _inspectable(self, head: ResponseHead) -> bool:
        content_type = head.get(b"content-type")
        if content_type is None:
            return False
        media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        return media in self.body_types

    def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        state = state_of(ctx)
        if state is None or state.response_done:
            return chunk
        limit = self.max_response_body
        decoder = state.decoder
        # what the rules read of this piece: the piece, or the text it inflates to
        seen = chunk if decoder is None else decoder.inflate(chunk, limit - state.size)
        if self.stream:
            room = limit - state.size
            if seen and room > 0:
                state.held.append(seen[:room])  # only the inspected part is kept
            out = chunk
        else:
            if chunk:
                state.held.append(chunk)  # as it came, until phase 4 lets it through
            if decoder is not None and seen:
                state.plain.append(seen)
            out = b""
        state.size += len(seen)
        if state.size >= limit or end:
            held = b"".join(state.held)
            text = held if self.stream or decoder is None else b"".join(state.plain)
            state.held, state.plain = [], []
            self._phase4(ctx, state, text[:limit])
            if not self.stream:
                out = held  # phase 4 let it through: release what was held
        if out:
            state.sent = True
        return out

    def _phase4(self, ctx: RequestContext, state: State, body: bytes | None = None) -> None:
        """Run phase 4 (on `body` when the body is inspected); raises Refuse on a block."""
        state.response_done = True
        if not self.phase4:
            return
        txn = state.txn
        if body is not None:
            txn.load_response_body(body)
        self.waf.phase(txn, 4)
        if txn.disruptive is not None:
            self._verdict_response(ctx, state)
        else:
            self.count(ctx, txn)

    def _verdict_response(self, ctx: RequestContext, state: State) -> None:
        txn = state.txn
        state.response_done = True
        state.held = []
        what = describe(txn, state.response_start, outbound=True)
        phase = txn.disruptive.phase if txn.disruptive is not None else 0
        ids = ",".join(str(m.rule_id) for m in txn.matches[state.response_start :])
        if not self.block:
            ctx.decision = f"waf: detected response {what}"
            log.info("waf detected the response to %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
            self.report(ctx, txn, phase, "detected", None, state.inbound)
            return
        ctx.decision = f"waf: blocked response by {what}"
        log.info("waf blocked the response to %s %s: %s [rules %s]", ctx.method, ctx.path, what, ids)
        # bytes already went out (stream mode): the engine can only cut the connection
        action = "connection_cut" if state.sent else "blocked"
        self.report(ctx, txn, phase, action, None if state.sent else self.status, state.inbound)
        answer = Response(self.status, [(b"Content-Type", b"text/plain")], b"response blocked by the WAF\n")
        raise Refuse(answer, f"waf blocked the response ({what})")
